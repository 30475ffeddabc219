"""Structured output (rwkvcpp.constrain): whatever a model's weights, a constrained generation is
text the grammar accepts. Random-weight models with the World vocabulary (multi-byte tokens)
and the built-in byte-level model; schemas bounded so that a valid document ends well within
max_tokens."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from support.checkpoints import make_checkpoint  # noqa: E402

from rwkvcpp import Model  # noqa: E402
from rwkvcpp.batch import generate_batch  # noqa: E402
from rwkvcpp.chat_format import parse_tool_calls  # noqa: E402
from rwkvcpp.constrain import Grammar, GrammarError  # noqa: E402
from rwkvcpp.generate import Generator  # noqa: E402
from rwkvcpp.sampling import SamplingParams  # noqa: E402
from rwkvcpp.writer import write_model  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
        "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 4}]},
    },
    "required": ["name", "age", "tags", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("constrain") / "world.bin"
    write_model(path, make_checkpoint("v7", n_layer=1, n_embed=64, n_vocab=65536, seed=3), dtype="FP16")
    return Model(path, threads=2)


@pytest.fixture(scope="module")
def byte_model():
    return Model(threads=2)


def test_json_schema_always_validates(world_model, byte_model):
    grammar = Grammar.json_schema(PERSON)
    for model in (world_model, byte_model):
        prompts = ["{", "Person:", "x", "\n"] * 5
        params = [SamplingParams(max_tokens=120, temperature=1.2, seed=seed, grammar=grammar) for seed in range(20)]
        for result in generate_batch(model, prompts, params):
            assert result.finish_reason == "stop", result.text
            jsonschema.validate(json.loads(result.text), PERSON)


def test_json_object_and_greedy(world_model):
    result = Generator(world_model).complete("a", SamplingParams(max_tokens=200, temperature=0,
                                                                 grammar=Grammar.json_schema(
                                                                     {"type": "object", "properties": {
                                                                         "k": {"enum": [1, 2, 3]}},
                                                                      "required": ["k"],
                                                                      "additionalProperties": False})))
    assert json.loads(result.text)["k"] in (1, 2, 3) and result.finish_reason == "stop"


def test_gbnf_and_regex(byte_model, world_model):
    answer = Grammar.gbnf('root ::= ("yes" | "no" | "maybe " [0-9]) "."')
    date = Grammar.regex(r"\d{4}-\d{2}-\d{2}")
    for model in (byte_model, world_model):
        for seed in range(8):
            text = Generator(model).complete("Q", SamplingParams(max_tokens=20, seed=seed, grammar=answer)).text
            assert re.fullmatch(r"(yes|no|maybe [0-9])\.", text), text
            text = Generator(model).complete("D", SamplingParams(max_tokens=20, seed=seed, grammar=date)).text
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", text), text


def test_logprobs_under_a_grammar(byte_model):
    """Logprobs come from the distribution that sampled: tokens the grammar forbids have none."""
    params = SamplingParams(max_tokens=10, seed=1, logprobs=5, grammar=Grammar.regex("[ab]{6}"))
    result = Generator(byte_model).complete("x", params)
    assert re.fullmatch("[ab]{6}", result.text)
    for entry in result.logprobs:
        alternatives = {t for t, lp in entry.top if lp > -np.inf}
        assert alternatives <= {ord("a"), ord("b")}
        assert sum(np.exp(lp) for _, lp in entry.top) == pytest.approx(1.0)


def test_required_tool_call_follows_the_schemas(byte_model):
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
            "required": ["city"], "additionalProperties": False}}},
        {"type": "function", "function": {"name": "add", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer", "maximum": 99, "minimum": 0},
                                             "b": {"type": "integer", "maximum": 99, "minimum": 0}},
            "required": ["a", "b"], "additionalProperties": False}}},
    ]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for seed in range(6):
        for choice in ("required", {"type": "function", "function": {"name": "add"}}):
            reply = byte_model.create_chat_completion([{"role": "user", "content": "Weather in Paris?"}], tools=tools,
                                                      tool_choice=choice, seed=seed, max_tokens=120)
            (call,) = reply["choices"][0]["message"]["tool_calls"]
            name = call["function"]["name"]
            assert name == "add" or choice == "required"
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[name])


def test_response_format_in_the_openai_calls(byte_model):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    reply = byte_model.create_chat_completion([{"role": "user", "content": "A person"}], response_format=fmt,
                                              seed=4, max_tokens=150, n=2)
    for choice in reply["choices"]:
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
    text = byte_model.create_completion("Person: ", response_format={"type": "json_object"}, seed=2,
                                        max_tokens=300)["choices"][0]["text"]
    assert isinstance(json.loads(text), dict)
    with pytest.raises(ValueError, match="give one of them"):
        byte_model.create_completion("x", response_format={"type": "json_object"}, grammar='root ::= "a"')


def test_bad_grammars_say_what_is_wrong():
    with pytest.raises(GrammarError, match="invalid GBNF grammar"):
        Grammar.gbnf("root ::= (")
    with pytest.raises(GrammarError, match="invalid json_schema: .*objekt"):
        Grammar.json_schema({"type": "objekt"})
    with pytest.raises(GrammarError, match="not valid JSON"):
        Grammar.json_schema("{nope")
    with pytest.raises(GrammarError, match="invalid regex"):
        Grammar.regex("(")
    with pytest.raises(ValueError, match="grammar must be a rwkvcpp.constrain.Grammar"):
        SamplingParams(grammar="root ::= x")
