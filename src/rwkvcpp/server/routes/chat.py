"""``POST /v1/chat/completions``: OpenAI's chat completions, with tool calls and streaming."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ...chat_format import render_chat
from ...completion import ChatChoices
from ..errors import bad_request
from ..jobs import Generate
from ..schemas import ChatCompletionRequest
from .choices import respond
from .params import encode, sampling_params
from .states import continuation, start_state

router = APIRouter(tags=["OpenAI"])


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    """Chat (OpenAI's chat completions), with tool calls and streaming."""
    engine, scheduler = request.app.state.engine, request.app.state.scheduler
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    try:
        prompt = render_chat(body.messages, body.tools, body.tool_choice)
    except ValueError as e:
        param = "tool_choice" if "tool_choice" in str(e) else "messages"
        raise bad_request(str(e), param) from None
    params = await run_in_threadpool(sampling_params, engine, body, prompt.stop, logprobs, prompt.call_grammar)
    start = await run_in_threadpool(start_state, request, body.rwkv_state)
    ids = await run_in_threadpool(encode, engine, continuation(prompt.text, start), "messages")
    job = scheduler.submit(Generate([ids], params, start))
    engine.count(requests=1)
    choices = ChatChoices(len(params), prompt.tools, prompt.prefill, single_call=body.parallel_tool_calls is False,
                          tokenizer=engine.tokenizer if logprobs is not None else None)
    return await respond(request, job, choices, model_id=engine.model_id, prompt_tokens=len(ids), stream=body.stream,
                         include_usage=bool(body.stream_options and body.stream_options.include_usage))
