"""``POST /v1/completions``: OpenAI's legacy text completions, with streaming."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ...completion import TextChoices, prompt_logprobs
from ..errors import bad_request
from ..jobs import Generate
from ..schemas import CompletionRequest
from .choices import respond
from .params import as_list, sampling_params, token_lists
from .states import start_state

router = APIRouter(tags=["OpenAI"])


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    """Continue a prompt (OpenAI's legacy completions), with streaming."""
    engine, scheduler = request.app.state.engine, request.app.state.scheduler
    if body.suffix:
        raise bad_request("suffix (insertion) is not supported by this server", "suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise bad_request("best_of is not supported by this server (leave it out, or equal to n)", "best_of")
    max_batch = engine.config.max_batch
    raw = as_list(body.prompt, "prompt", "prompts", max_batch)
    params = await run_in_threadpool(sampling_params, engine, body, (), body.logprobs)  # a grammar compiles here
    n = len(params)
    if len(raw) * n > max_batch:
        raise bad_request(f"{len(raw)} prompts x n={n} is more than this server's {max_batch} choices "
                          "per request", "n")

    def tokenize() -> tuple[list[list[int]], list[str]]:
        prompts = token_lists(engine, raw, "prompt")
        texts = [item if isinstance(item, str) else engine.tokenizer.decode(ids) if body.echo else ""
                 for item, ids in zip(raw, prompts)]
        return prompts, texts

    prompts, texts = await run_in_threadpool(tokenize)
    start = await run_in_threadpool(start_state, request, body.rwkv_state)
    scored = None
    if body.echo and body.logprobs is not None:  # the prompt's own logprobs (scoring a text)
        scored = await run_in_threadpool(
            lambda: [(ids, prompt_logprobs(engine.model, ids, body.logprobs, start)) for ids in prompts])
        scored = [scored[i // n] for i in range(len(prompts) * n)]
    job = scheduler.submit(Generate(prompts, params, start))
    engine.count(requests=1)
    echoed = [texts[i // n] for i in range(len(prompts) * n)] if body.echo else None
    choices = TextChoices(len(prompts) * n, echoed, engine.tokenizer if body.logprobs is not None else None, scored)
    return await respond(request, job, choices, model_id=engine.model_id,
                         prompt_tokens=sum(len(p) for p in prompts), stream=body.stream,
                         include_usage=bool(body.stream_options and body.stream_options.include_usage))
