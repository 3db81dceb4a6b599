"""The simulator's engine keeps serving when a client goes away mid-step (the server aborts its request)."""

import asyncio

from bench.sim.engine import Engine, SimRequest, load_profile


def test_a_request_aborted_during_a_step_does_not_stop_the_engine():
    async def scenario():
        eng = Engine(load_profile("tiny-test"))
        task = asyncio.ensure_future(eng.run())
        # the first finishes in the step it is aborted in (prefill emits its only token): the case that broke
        reqs = [SimRequest(prompt_tokens=64, max_tokens=1)] + [SimRequest(prompt_tokens=64, max_tokens=8) for _ in range(3)]
        for r in reqs:
            eng.submit(r)
        await asyncio.sleep(0.05)  # mid-step: the first step is planned with all four in it
        gone = reqs[0]
        gone.aborted = True  # what the server's _abort does when the client disconnects
        eng.running.remove(gone)
        eng.kv_reserved -= gone.prompt_tokens + gone.max_tokens
        late = SimRequest(prompt_tokens=64, max_tokens=8)
        await asyncio.sleep(0.1)
        eng.submit(late)
        for _ in range(100):
            if all(r.done for r in reqs[1:] + [late]):
                break
            await asyncio.sleep(0.05)
        alive = not task.done()
        task.cancel()
        return alive, [r.done for r in reqs[1:] + [late]], gone.done

    alive, done, gone_done = asyncio.run(scenario())
    assert alive and all(done) and not gone_done
