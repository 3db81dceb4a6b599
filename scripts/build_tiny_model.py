"""Build a tiny Llama locally (no download): a byte-level BPE tokenizer trained on local text and
random weights, saved with save_pretrained. Run with the vLLM venv's python (it has torch,
transformers, tokenizers). Usage: build_tiny_model.py OUT_DIR TEXT_FILE"""

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

out, text_file = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
text = text_file.read_text()

tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator([text] * 4, trainer)
bos = tok.token_to_id("<|begin_of_text|>")
tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                   special_tokens=[("<|begin_of_text|>", bos)])

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

chat_template = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                               pad_token="<|end_of_text|>", chat_template=chat_template)
fast.save_pretrained(out)

cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                  bos_token_id=bos, eos_token_id=tok.token_to_id("<|end_of_text|>"), tie_word_embeddings=True,
                  torch_dtype="bfloat16")
import torch  # noqa: E402

torch.manual_seed(0)
model = LlamaForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(out)
print(json.dumps({"model_dir": str(out), "vocab": tok.get_vocab_size()}))
