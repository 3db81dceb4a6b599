"""The built-in simulated server: an OpenAI-compatible streaming server whose timing follows a
continuous-batching engine model (engine.py), served over HTTP (server.py). It is the demo target,
the client-calibration reference (deterministic mode with ground-truth timestamps) and a fast test
server. Results against it are labelled SIMULATED everywhere."""
