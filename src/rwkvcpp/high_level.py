"""Text in, text out: the methods of :class:`rwkvcpp.Model` in the shape of llama-cpp-python's
``Llama``, over the model's token-level methods.

* :meth:`~HighLevelAPI.tokenize` / :meth:`~HighLevelAPI.detokenize`;
* :meth:`~HighLevelAPI.generate` (text) and :meth:`~HighLevelAPI.complete` (a
  :class:`~rwkvcpp.generate.Generation`: text, tokens, usage, finish reason, the final state and
  logits), for one prompt or a list of prompts;
* :meth:`~HighLevelAPI.create_completion` (also ``model(prompt)``),
  :meth:`~HighLevelAPI.create_chat_completion` and :meth:`~HighLevelAPI.create_embedding`:
  OpenAI-shaped dicts, made by the same code as the HTTP server's answers
  (:mod:`rwkvcpp.completion`, :mod:`rwkvcpp.chat_format`);
* :meth:`~HighLevelAPI.chat`: the reply's text to a list of messages;
* :meth:`~HighLevelAPI.embed`: vectors for text or token ids.

A prompt is text or a list of token ids; a list of texts (or of token-id lists) is several
prompts, run one after another. Sampling settings are the keywords of
:class:`~rwkvcpp.sampling.SamplingParams`.

Defaults: ``generate`` / ``complete`` sample as :class:`~rwkvcpp.sampling.SamplingParams` does
(temperature 1, top_p 1, no penalties), like the low-level :class:`~rwkvcpp.generate.Generator`;
the OpenAI-shaped calls use the server's defaults (:data:`rwkvcpp.sampling.CHAT_DEFAULTS`), so a
request gives the same answer in Python and over HTTP. Every call stops at the vocabulary's
end-of-text token (0 in the World and 20B vocabularies) unless ``stop_tokens`` says otherwise.

``repeat_penalty`` (llama.cpp's multiplicative penalty) is refused rather than mapped: RWKV's
penalties (``presence_penalty``, ``frequency_penalty``, ``penalty_decay``) are additive and
none of them is equivalent to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Optional, Union, cast, overload

import numpy as np

from ._typing import FloatArray, JSONObject
from .sampling import CHAT_DEFAULTS, SamplingParams

if TYPE_CHECKING:
    from .generate import Generation, Generator
    from .model import Model, States, Tokens, TokensPerSequence
    from .tokenizer import Tokenizer

__all__ = ["HighLevelAPI"]

Prompt = Union[str, bytes, Sequence[int], np.ndarray]
Prompts = Union[Prompt, Sequence[Prompt]]

DEFAULT_MAX_TOKENS = 256
# Inputs of embed() read in one pass: past a few rows the weights' cost is shared already, and each
# row holds a state (12 MiB on a 1.5B v7 model) while the pass runs.
EMBED_GROUP = 16


def _is_token_id(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _split(inputs: Any, what: str) -> tuple[list[Any], bool]:
    """``(items, batched)``: one text or token-id list is one item; a list of them is several."""
    if isinstance(inputs, (str, bytes, bytearray)):
        return [inputs], False
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 2:
            return list(inputs), True
        return [inputs], False
    try:
        items = list(inputs)
    except TypeError:
        raise TypeError(f"{what} must be text, a list of token ids, or a list of either; "
                        f"not {type(inputs).__name__}") from None
    if not items:
        raise ValueError(f"{what} is empty")
    if all(_is_token_id(x) for x in items):
        return [items], False
    if any(_is_token_id(x) for x in items):
        raise TypeError(f"{what} mixes token ids with other items: give one list of token ids, or a list of "
                        "texts / token-id lists")
    return items, True


def _refuse_repeat_penalty(value: Optional[float]) -> None:
    if value is not None and value != 1.0:
        raise ValueError(
            f"repeat_penalty={value!r}: llama.cpp's multiplicative repeat penalty has no RWKV equivalent; use "
            "presence_penalty and frequency_penalty (subtracted from a repeated token's logit) with penalty_decay"
        )


class HighLevelAPI:
    """Text-level methods of :class:`rwkvcpp.Model` (see :mod:`rwkvcpp.high_level`)."""

    # Provided by Model.
    path: str
    n_vocab: int
    n_embed: int

    if TYPE_CHECKING:
        def _require_open(self) -> None: ...
        def eval_embedding(self, tokens: Tokens, state: Optional[FloatArray] = None,
                           normalize: bool = True) -> tuple[FloatArray, FloatArray]: ...
        def eval_embedding_batch(self, tokens_per_sequence: TokensPerSequence,
                                 states: Optional[States] = None, *, normalize: bool = True,
                                 states_out: Optional[States] = None) -> tuple[FloatArray, States]: ...

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: Optional[str] = None, *, revision: Optional[str] = None,
                        **kwargs: Any) -> Any:
        """A model from the Hugging Face Hub (llama-cpp-python's ``Llama.from_pretrained``):
        ``filename`` in ``repo_id`` (None: the repository's one model file, or its Transformers
        folder), downloaded through ``huggingface-hub`` and its cache, converted to a ``.bin``
        once if it is a checkpoint (:mod:`rwkvcpp.hub`). ``kwargs`` go to ``Model(...)``
        (``threads=``, ...)."""
        from .hub import resolve

        return cls(resolve(repo_id, filename, revision=revision), **kwargs)  # type: ignore[call-arg]

    @property
    def _model(self) -> Model:
        """This object as the Model it is part of (only Model inherits these methods)."""
        return cast("Model", self)

    # ---- tokens --------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer used for text: by default the built-in one for ``n_vocab`` (World for
        65536, GPT-NeoX 20B for 50277/50304, bytes for 256), loaded when first used. Assign a
        ``Tokenizer``, a tokenizer name or a vocabulary file path to use another; ``None``
        goes back to the default."""
        tok: Optional[Tokenizer] = getattr(self, "_tokenizer", None)
        if tok is None:
            from .tokenizer import Tokenizer

            tok = self._tokenizer = Tokenizer.for_vocab(self.n_vocab)
        return tok

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        from .tokenizer import Tokenizer

        if value is not None and not isinstance(value, Tokenizer):
            value = Tokenizer.from_name(value, n_vocab=self.n_vocab)
        self._tokenizer = value

    def tokenize(self, text: Union[str, bytes]) -> list[int]:
        """The token ids of ``text`` (bytes are read as UTF-8 text; a byte vocabulary takes
        them as they are). RWKV has no beginning-of-text token: nothing is added."""
        self._require_open()
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"tokenize takes text (str or bytes), not {type(text).__name__}")
        if isinstance(text, (bytes, bytearray)) and self.tokenizer.name != "bytes":
            text = bytes(text).decode("utf-8")
        return self.tokenizer.encode(text)

    def detokenize(self, tokens: Union[Sequence[int], np.ndarray]) -> str:
        """The text of token ids (as ``str``: bytes that do not form whole UTF-8 characters
        become U+FFFD). Ids outside the vocabulary raise ArgumentError."""
        self._require_open()
        from .model import check_token_range

        ids = [int(t) for t in tokens]
        check_token_range(ids, self.n_vocab)
        return self.tokenizer.decode(ids)

    # ---- embeddings ----------------------------------------------------------------------------

    def embed(self, input: Any, normalize: bool = True) -> np.ndarray:
        """Sentence embeddings (the final hidden state after the input; see
        :meth:`eval_embedding`). ``input`` is a text, a list of token ids, or a list of either:
        one input gives a vector of shape ``(n_embed,)``, a list gives ``(len(input), n_embed)``.
        Vectors have unit length when ``normalize``."""
        items, batched = _split(input, "input")
        vectors = self._embed_ids([self._ids(item, "input") for item in items], normalize)
        return vectors if batched else vectors[0]

    def create_embedding(self, input: Any, *, encoding_format: str = "float", model: Optional[str] = None) -> JSONObject:
        """OpenAI's embeddings response for ``input`` (a text, token ids, or a list of either),
        the same as the server's ``/v1/embeddings``: normalised vectors, as lists of floats or
        base64 of little-endian float32."""
        from .completion import embedding_response, model_id

        if encoding_format not in ("float", "base64"):
            raise ValueError(f"encoding_format must be 'float' or 'base64', not {encoding_format!r}")
        items, _ = _split(input, "input")
        ids = [self._ids(item, "input") for item in items]
        vectors = self._embed_ids(ids, True)
        return embedding_response(vectors, model_id(self, model), sum(len(x) for x in ids), encoding_format)

    def _embed_ids(self, inputs: list[list[int]], normalize: bool) -> np.ndarray:
        """The vectors of several inputs, read together in groups (one weight pass per group);
        each vector is the one :meth:`eval_embedding` gives its input alone."""
        out = np.empty((len(inputs), self.n_embed), np.float32)
        for at in range(0, len(inputs), EMBED_GROUP):
            group = inputs[at:at + EMBED_GROUP]
            out[at:at + len(group)] = self.eval_embedding_batch(group, normalize=normalize)[0]
        return out

    def _ids(self, item: Any, what: str) -> list[int]:
        ids = self._generator().encode(item)
        if not ids:
            raise ValueError(f"{what} is empty: there is nothing to read")
        return ids

    # ---- generation ----------------------------------------------------------------------------

    def _generator(self) -> Generator:
        self._require_open()
        from .generate import Generator

        return Generator(self._model, self.tokenizer)

    def _params(self, max_tokens: Optional[int], sampling: dict[str, Any]) -> SamplingParams:
        if "params" in sampling:
            raise TypeError("pass sampling settings as keyword arguments (temperature=..., top_p=...), not params=")
        _refuse_repeat_penalty(sampling.pop("repeat_penalty", None))
        if sampling.get("stop_tokens") is None:
            from .completion import end_tokens

            sampling["stop_tokens"] = end_tokens(self.tokenizer)
        return SamplingParams(max_tokens=max_tokens, **sampling)

    # The overloads give each use its own return type: one prompt -> str, a list -> list[str],
    # stream=True -> Iterator[str]. Text is also a sequence of texts to a type checker; the first
    # overload that matches wins, as the code decides at run time.
    @overload
    def generate(self, prompt: Prompt, max_tokens: Optional[int] = ..., state: Optional[FloatArray] = ...,
                 stream: Literal[False] = ..., **sampling: Any) -> str: ...

    @overload
    def generate(self, prompt: Sequence[Prompt], max_tokens: Optional[int] = ..., state: Optional[FloatArray] = ...,
                 stream: Literal[False] = ..., **sampling: Any) -> list[str]: ...

    @overload
    def generate(self, prompt: Prompt, max_tokens: Optional[int] = ..., state: Optional[FloatArray] = ..., *,
                 stream: Literal[True], **sampling: Any) -> Iterator[str]: ...

    @overload
    def generate(self, prompt: Prompts, max_tokens: Optional[int] = ..., state: Optional[FloatArray] = ...,
                 stream: bool = ..., **sampling: Any) -> Union[str, list[str], Iterator[str]]: ...

    def generate(self, prompt: Prompts, max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
                 state: Optional[FloatArray] = None, stream: bool = False,
                 **sampling: Any) -> Union[str, list[str], Iterator[str]]:
        """Continues ``prompt`` (text or token ids) and returns the generated text; for a list
        of prompts, a list of texts (each prompt starts from ``state``). With ``stream=True``
        (one prompt only), an iterator of text pieces as they are generated.

        ``sampling`` takes the fields of :class:`~rwkvcpp.sampling.SamplingParams`
        (temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty, penalty_decay,
        stop, stop_tokens, seed, ...). ``state`` (not modified) continues an earlier context.
        For the final state, usage counts and finish reason, use :meth:`complete`.
        """
        params = self._params(max_tokens, sampling)
        prompts, batched = _split(prompt, "prompt")
        generator = self._generator()
        if stream:
            if batched:
                raise ValueError("stream=True takes one prompt; generate a list of prompts without streaming")
            return (chunk.text for chunk in generator.stream(prompts[0], params, state) if chunk.text)
        if not batched:
            return generator.complete(prompts[0], params, state).text
        from .batch import generate_batch

        return [g.text for g in generate_batch(self._model, prompts, params, state, tokenizer=generator.tokenizer)]

    @overload
    def complete(self, prompt: Prompt, max_tokens: Optional[int] = ..., state: Optional[FloatArray] = ...,
                 logits: Optional[FloatArray] = ..., **sampling: Any) -> Generation: ...

    @overload
    def complete(self, prompt: Sequence[Prompt], max_tokens: Optional[int] = ..., state: Optional[FloatArray] = ...,
                 logits: Optional[FloatArray] = ..., **sampling: Any) -> list[Generation]: ...

    def complete(self, prompt: Prompts, max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
                 state: Optional[FloatArray] = None, logits: Optional[FloatArray] = None,
                 **sampling: Any) -> Union[Generation, list[Generation]]:
        """Like :meth:`generate`, but returns the :class:`~rwkvcpp.generate.Generation` (a list
        of them for a list of prompts): ``text``, ``tokens``, ``finish_reason``, ``usage``, and
        ``state`` / ``logits`` after the reply. To go on exactly where it ended, pass both back
        with an empty prompt (``complete("", state=g.state, logits=g.logits)``), or only the
        state with more text."""
        params = self._params(max_tokens, sampling)
        generator = self._generator()
        prompts, batched = _split(prompt, "prompt")
        if not batched:
            return generator.complete(prompts[0], params, state, logits=logits)
        from .batch import generate_batch

        return generate_batch(self._model, prompts, params, state, tokenizer=generator.tokenizer, logits=logits)

    # ---- OpenAI-shaped -------------------------------------------------------------------------

    def _openai_params(self, max_tokens: Optional[int], n: int, extra_stop: Sequence[str],
                       settings: dict[str, Any]) -> list[SamplingParams]:
        from .completion import choice_params, end_tokens

        _refuse_repeat_penalty(settings.pop("repeat_penalty"))
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, not {n!r}")
        stop = settings.pop("stop")
        stop = [stop] if isinstance(stop, str) else list(stop or ())
        for name, default in CHAT_DEFAULTS.items():
            if settings.get(name) is None:
                settings[name] = default
        if settings.get("stop_tokens") is None:
            settings["stop_tokens"] = end_tokens(self.tokenizer)
        settings["logit_bias"] = settings.get("logit_bias") or {}
        base = SamplingParams(max_tokens=max_tokens, stop=tuple(dict.fromkeys([*stop, *extra_stop])), **settings)
        return choice_params(base, n)

    def create_completion(
        self, prompt: Prompts, max_tokens: Optional[int] = DEFAULT_MAX_TOKENS, *,
        temperature: Optional[float] = None, top_p: Optional[float] = None, top_k: Optional[int] = None,
        min_p: Optional[float] = None, presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None, penalty_decay: Optional[float] = None,
        repeat_penalty: Optional[float] = None, count_prompt: bool = False,
        stop: Union[str, Sequence[str], None] = None, stop_tokens: Optional[Sequence[int]] = None,
        seed: Optional[int] = None, logit_bias: Optional[JSONObject] = None, n: int = 1, echo: bool = False,
        logprobs: Optional[int] = None, response_format: Optional[JSONObject] = None, grammar: Any = None,
        stream: bool = False, stream_options: Optional[JSONObject] = None, model: Optional[str] = None,
    ) -> Union[JSONObject, Iterator[JSONObject]]:
        """OpenAI's text completion (``/v1/completions``), the same code as the server's.

        ``prompt``: text or token ids, or a list of them (one choice per prompt, ``n`` each).
        Returns ``{"id", "object": "text_completion", "created", "model", "choices": [{"text",
        "index", "logprobs", "finish_reason"}], "usage"}``; with ``stream=True`` an iterator of
        such chunks, each with the next text of one choice (``stream_options={"include_usage":
        True}`` adds a last chunk with the usage). ``echo`` puts the prompt before the text.
        Sampling fields left as None take :data:`~rwkvcpp.sampling.CHAT_DEFAULTS`; with a
        ``seed``, choice ``i`` uses ``seed + i``. ``logit_bias`` maps token ids to values added
        to their logits (``-inf`` bans). ``logprobs=k`` (0..20) gives each generated token's log
        probability and the k most likely tokens in OpenAI's completions shape (``tokens``,
        ``token_logprobs``, ``top_logprobs``, ``text_offset``), from the distribution that
        sampled it (see :mod:`rwkvcpp.sampling`). ``response_format`` (``{"type":
        "json_object"}``, or ``{"type": "json_schema", "json_schema": {"schema": {...}}}``) or
        ``grammar`` (GBNF text, or a :class:`~rwkvcpp.constrain.Grammar`) holds the output to
        that form (:mod:`rwkvcpp.constrain`; needs llguidance). ``model`` names the model in the
        response (default: the file's name).
        """
        from .completion import TextChoices, generate_items, model_id, respond, response_grammar

        settings = dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                        presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                        penalty_decay=penalty_decay, repeat_penalty=repeat_penalty, count_prompt=count_prompt,
                        stop=stop, stop_tokens=stop_tokens, seed=seed, logit_bias=logit_bias, logprobs=logprobs,
                        grammar=response_grammar(response_format, grammar))
        params = self._openai_params(max_tokens, n, (), settings)
        items, _ = _split(prompt, "prompt")
        prompts = [self._ids(item, "prompt") for item in items]
        echoed = None
        if echo:
            texts = [item if isinstance(item, str) else self.tokenizer.decode(ids) for item, ids in zip(items, prompts)]
            echoed = [texts[i // n] for i in range(len(prompts) * n)]
        generated = generate_items(self._generator(), prompts, params)
        scored = None
        if echo and logprobs is not None:
            from .completion import prompt_logprobs

            scored = [(ids, prompt_logprobs(self._model, ids, logprobs)) for ids in prompts]
            scored = [scored[i // n] for i in range(len(prompts) * n)]
        choices = TextChoices(len(prompts) * n, echoed, self.tokenizer if logprobs is not None else None, scored)
        return respond(generated, choices, model_id=model_id(self, model),
                       prompt_tokens=sum(len(p) for p in prompts), stream=stream,
                       include_usage=bool(stream_options and stream_options.get("include_usage")))

    __call__ = create_completion

    def create_chat_completion(
        self, messages: Sequence[Any], tools: Optional[Sequence[Any]] = None, tool_choice: Any = None, *,
        parallel_tool_calls: Optional[bool] = None, max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
        temperature: Optional[float] = None, top_p: Optional[float] = None, top_k: Optional[int] = None,
        min_p: Optional[float] = None, presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None, penalty_decay: Optional[float] = None,
        repeat_penalty: Optional[float] = None, count_prompt: bool = False,
        stop: Union[str, Sequence[str], None] = None, stop_tokens: Optional[Sequence[int]] = None,
        seed: Optional[int] = None, logit_bias: Optional[JSONObject] = None, n: int = 1, logprobs: bool = False,
        top_logprobs: Optional[int] = None, response_format: Optional[JSONObject] = None, grammar: Any = None,
        stream: bool = False, stream_options: Optional[JSONObject] = None, model: Optional[str] = None,
    ) -> Union[JSONObject, Iterator[JSONObject]]:
        """OpenAI's chat completion (``/v1/chat/completions``), the same code as the server's.

        ``messages``: dicts with ``role`` (system, developer, user, assistant, tool) and
        ``content``, plus ``tool_calls`` / ``tool_call_id`` for tool use. ``tools``: OpenAI
        function tools; ``tool_choice``: "auto", "none", "required" or a function. A reply in
        the tool-call format comes back as ``message["tool_calls"]`` with finish reason
        ``"tool_calls"`` (``parallel_tool_calls=False`` keeps the first call only).

        Returns ``{"id", "object": "chat.completion", "created", "model", "choices":
        [{"index", "message": {"role": "assistant", "content", ...}, "logprobs",
        "finish_reason"}], "usage"}``; with ``stream=True`` an iterator of
        ``chat.completion.chunk`` dicts whose ``delta``s add up to the same message. The
        sampling keywords are those of :meth:`create_completion`; ``logprobs=True`` (with
        ``top_logprobs``, 0..20) gives ``choice["logprobs"]["content"]``, one entry per token
        (``token``, ``logprob``, ``bytes``, ``top_logprobs``). ``response_format`` and ``grammar``
        are as in :meth:`create_completion`; with ``tool_choice`` "required" or a function, the
        call itself is held to the tools' parameter schemas the same way (when llguidance is
        installed).
        """
        from .chat_format import render_chat
        from .completion import ChatChoices, generate_items, model_id, respond, response_grammar

        prompt = render_chat(messages, tools, tool_choice)
        settings = dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                        presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                        penalty_decay=penalty_decay, repeat_penalty=repeat_penalty, count_prompt=count_prompt,
                        stop=stop, stop_tokens=stop_tokens, seed=seed, logit_bias=logit_bias,
                        logprobs=_chat_logprobs(logprobs, top_logprobs),
                        grammar=response_grammar(response_format, grammar, prompt.call_grammar))
        params = self._openai_params(max_tokens, n, prompt.stop, settings)
        ids = self._ids(prompt.text, "messages")
        choices = ChatChoices(n, prompt.tools, prompt.prefill, single_call=parallel_tool_calls is False,
                              tokenizer=self.tokenizer if logprobs else None)
        generated = generate_items(self._generator(), [ids], params)
        return respond(generated, choices, model_id=model_id(self, model), prompt_tokens=len(ids), stream=stream,
                       include_usage=bool(stream_options and stream_options.get("include_usage")))

    @overload
    def chat(self, messages: Union[str, Sequence[JSONObject]], *, stream: Literal[False] = ...,
             **settings: Any) -> str: ...

    @overload
    def chat(self, messages: Union[str, Sequence[JSONObject]], *, stream: Literal[True],
             **settings: Any) -> Iterator[str]: ...

    def chat(self, messages: Union[str, Sequence[JSONObject]], *, stream: bool = False,
             **settings: Any) -> Union[str, Iterator[str]]:
        """The assistant's reply to ``messages`` (a list of OpenAI messages, or one user message
        as a string) as text; with ``stream=True``, an iterator of its pieces. Takes the
        keywords of :meth:`create_chat_completion`; a reply that is only tool calls gives ""."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        reply: Any = self.create_chat_completion(messages, stream=stream, **settings)
        if stream:
            return _contents(reply)
        return reply["choices"][0]["message"]["content"] or ""


def _chat_logprobs(logprobs: bool, top_logprobs: Optional[int]) -> Optional[int]:
    """Chat's two fields as SamplingParams.logprobs (None: off)."""
    if top_logprobs is not None and not logprobs:
        raise ValueError("top_logprobs needs logprobs=True")
    return (top_logprobs or 0) if logprobs else None


def _contents(chunks: Iterator[JSONObject]) -> Iterator[str]:
    """The content pieces of a streamed chat completion."""
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                yield choice["delta"]["content"]
