"""The LLM engine: a local instruct causal LM that labels a text, lists its entities and fills a
topic's typed fields, in one JSON object per text, decoded under a grammar so it is valid by
construction.

Per topic (`LLMTask`), compiled once at start-up: a JSON Schema (label enum = the topic's labels,
entity type enum, the fields' JSON Schema as the task gives it), its xgrammar grammar, and a chat
prompt (instructions + few-shot examples). Per micro-batch: prompts sorted by length, cut into
passes of at most `max_batch` rows and `max_tokens` (prompt + new) tokens, left-padded, greedy.

The label score is a probability from the model: the assistant turn is started with
`{"label": "`, so the next tokens spell the label. At each of those steps the model's next-token
distribution *under the grammar* (logits masked to the tokens the grammar allows, softmax) is
kept. A label's probability is the mass of the tokens that lead only to it, following the greedy
path through tokens shared by several labels (e.g. "d" for "delivery" and "damaged"); a shared
token off the greedy path splits its mass evenly between its labels (the one approximation). Once
one label remains the grammar forces the rest (probability 1). The scores sum to 1 over the
topic's labels and the chosen label's score is exact.

Entity texts must occur verbatim in the input: their offsets are found in the text; a span that
does not occur is dropped and counted (`on_dropped_spans`), never invented. An entity's score is
the geometric mean of the grammar-constrained probabilities of the tokens that wrote its text.
The entity list has at most `max_entities` items and each text at most `max_entity_chars`
characters, so a model that keeps listing entities is made to close the list.

A field property marked `x-grounded` (streams/engine/grounding.py) must say what the text says:
a value the text does not contain becomes null and is counted (`on_ungrounded`). Each typed
field's confidence is the product of the grammar-constrained probabilities of the tokens that
wrote its value (the value's probability under the constrained model, along its tokenization),
not their geometric mean: once a value's first token is chosen the grammar often forces the rest
with probability 1, which a mean would count as evidence. A nulled field keeps the confidence of
the value the model wrote.

An output cut off by the token cap gets one retry with `retry_max_new_tokens`; still cut off, it
is an `LLMTruncated` for that text alone (the pipeline dead-letters it as `llm_truncated`).

The user's text is data, never markup: it is tokenized on its own with special-token parsing off
(`<|im_end|>` in a ticket is the characters, not the end of the turn), between the template's
own tokens. A text of more than `max_input_tokens` tokens is not generated at all: it is an
`LLMTooLong` for that text alone (dead letter `too_long_for_model`), so one huge text never
makes a quadratic prefill or shrinks its batch. Numbers are bounded in the grammar (within
+-NUMBER_LIMIT, no exponent overflow to Infinity) and a non-finite one that still gets through
(unconstrained decoding) becomes null in a nullable field, else fails that text.

For the group's deadlines the engine keeps, per topic, its measured time per event (an EWMA of
what it did, seeded by the warm-up as one text alone running to both token caps): `max_events`
says how many events fit a time budget, for the sources to size their batches. `progress_at`
(monotonic) moves at every prefill and decoding step, so /livez tells a long batch that
progresses from a stuck one. Each generation pass reports its batch fill (rows per decoding step
over the rows a step may hold, averaged over its steps) to the inference thread."""

from __future__ import annotations

import bisect
import copy
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .grounding import GROUNDED, grounded
from .llm_loading import DEFAULT_LLM, choose_llm_dtype, resolve_llm
from .loading import ModelLoadError, choose_device
from .thread import inference_thread
from .types import Classification, Entity, LabelSet, ModelInfo, Prompt

log = logging.getLogger("streams.engine.llm")

# The personal-data types of the Rampart NER (BIO prefixes dropped): the LLM's default entity set,
# so a topic gets the same entity vocabulary whichever model extracts it.
RAMPART_ENTITY_TYPES = ("GIVEN_NAME", "SURNAME", "EMAIL", "PHONE", "URL", "TAX_ID", "BANK_ACCOUNT",
                        "ROUTING_NUMBER", "GOVERNMENT_ID", "PASSPORT", "DRIVERS_LICENSE",
                        "BUILDING_NUMBER", "STREET_NAME", "SECONDARY_ADDRESS", "CITY", "STATE",
                        "ZIP_CODE")
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
LABEL_PREFIX = '{"label": "'
# Every JSON number the grammar lets the model write lies within +-NUMBER_LIMIT: finite as an
# Avro float and double (a bare JSON number may be 1e999, which Python parses as Infinity).
NUMBER_LIMIT = 1e15
# Stands for the user's text while the chat template is rendered (private-use characters).
_USER_SLOT = "\ue000streams-user-text\ue000"
# EWMA weights of a batch's measured time per event: a slower batch counts more than a faster one.
ALPHA_SLOWER, ALPHA_FASTER = 0.5, 0.3


class LLMEventError(Exception):
    """One text failed on its own (the engine works): the pipeline dead-letters it with `reason`."""

    reason = "inference_error"


class LLMOutputError(LLMEventError):
    """One text's output could not be used: not the schema's JSON (unconstrained decoding), or a
    non-finite number in a field that cannot be null."""

    reason = "llm_invalid_output"


class LLMTooLong(LLMEventError):
    """One text has more tokens than `max_input_tokens`: it is not generated at all."""

    reason = "too_long_for_model"


class LLMTruncated(LLMOutputError):
    """One text's output was still cut off by the token cap after the retry with a larger cap."""

    reason = "llm_truncated"


@dataclass(frozen=True)
class LLMTask:
    """What the LLM produces for one input topic. `None` parts are not asked for."""

    name: str
    labels: LabelSet | None = None
    entity_types: tuple[str, ...] | None = None
    # The JSON Schema (an object) of the topic's typed fields: its properties in the order the
    # model writes them, each one's `description` what the prompt says of it.
    fields: dict | None = None

    @property
    def empty(self) -> bool:
        return self.labels is None and self.entity_types is None and self.fields is None


@dataclass
class LLMResult:
    classification: Classification | None
    entities: list[Entity] | None
    fields: dict | None
    output_tokens: int
    dropped_spans: int = 0
    # Per top-level typed field: the probability the constrained model gave its value.
    field_confidence: dict[str, float] | None = None
    ungrounded: list[str] = field(default_factory=list)  # fields nulled: not in the text


@dataclass
class _Prepared:
    task: LLMTask
    schema: dict
    messages: list[dict]  # system + few-shot turns; the user turn is appended per text
    forced: str  # the assistant turn's start, part of the prompt
    grammar: object | None  # xgrammar CompiledGrammar
    matcher: object | None  # a matcher that has accepted `forced`, forked per row
    label_targets: list[str] = field(default_factory=list)  # label + closing quote
    label_steps: int = 0
    compile_seconds: float = 0.0
    prefix_ids: list[int] = field(default_factory=list)  # instructions + examples, same for every text
    prefix_cache: object | None = None  # their KV cache, computed once (prefix_cache=True)
    # The template's tokens around the user's text (which is tokenized on its own, as data).
    user_open: list[int] = field(default_factory=list)
    user_close: list[int] = field(default_factory=list)
    prompt: Prompt | None = None  # what `messages` and `forced` were built from


def output_schema(task: LLMTask, max_string_chars: int | None = None, max_entities: int | None = None,
                  max_entity_chars: int | None = None) -> dict:
    """The JSON Schema of one output: label first (its tokens are scored), then entities, then
    the typed fields, in that order (xgrammar keeps the properties' order). Free-text strings
    (entity texts, string fields without a `maxLength` of their own) are capped at
    `max_string_chars`, entity texts at `max_entity_chars` where given, and the entity list at
    `max_entities` items: every output then ends within a bounded number of tokens."""
    props: dict = {}
    if task.labels is not None:
        props["label"] = {"type": "string", "enum": task.labels.labels}
    if task.entity_types is not None:
        text_chars = max_entity_chars or max_string_chars
        props["entities"] = {"type": "array", **({"maxItems": max_entities} if max_entities else {}), "items": {
            "type": "object", "properties": {"type": {"type": "string", "enum": list(task.entity_types)},
                                             "text": {"type": "string", "minLength": 1,
                                                      **({"maxLength": text_chars} if text_chars else {})}},
            "required": ["type", "text"], "additionalProperties": False}}
    if task.fields is not None:
        props["fields"] = _bounded_numbers(_capped_strings(task.fields, max_string_chars))
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _capped_strings(schema, max_chars: int | None):
    """Every free-text string (no `enum`, no `maxLength`) gets `"maxLength": max_chars`, so a
    model that rambles is made to close the string instead of running into the token cap."""
    if not max_chars:
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _capped_strings(s, max_chars) for name, s in out["properties"].items()}
    if "items" in out:
        out["items"] = _capped_strings(out["items"], max_chars)
    if "anyOf" in out:
        out["anyOf"] = [_capped_strings(s, max_chars) for s in out["anyOf"]]
    if out.get("type") == "string" and "enum" not in out:
        out.setdefault("maxLength", max_chars)
    return out


def _bounded_numbers(schema):
    """Every `"type": "number"` without bounds gets +-NUMBER_LIMIT, so the grammar cannot write
    a number that overflows to Infinity (xgrammar's plain number allows any exponent)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _bounded_numbers(s) for name, s in out["properties"].items()}
    if "items" in out:
        out["items"] = _bounded_numbers(out["items"])
    if "anyOf" in out:
        out["anyOf"] = [_bounded_numbers(s) for s in out["anyOf"]]
    if out.get("type") == "number":
        out.setdefault("minimum", -NUMBER_LIMIT)
        out.setdefault("maximum", NUMBER_LIMIT)
    return out


def _finite(value, schema, where: str = "fields"):
    """`value` with every non-finite float set to null where `schema` allows null; ValueError
    where it does not."""
    if isinstance(value, float) and not math.isfinite(value):
        if _nullable(schema):
            return None
        raise ValueError(f"{where} is {value} and cannot be null")
    if isinstance(value, dict):
        props = _branch(schema).get("properties", {})
        return {k: _finite(v, props.get(k, {}), f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        items = _branch(schema).get("items", {})
        return [_finite(v, items, f"{where}[]") for v in value]
    return value


def _ground(value, schema: dict, text: str, where: str, nulled: list[str]):
    """`value` with each value of an `x-grounded` property that `text` does not contain set to
    null, its path (e.g. `order_id`) appended to `nulled`."""
    if value is None:
        return None
    if schema.get(GROUNDED) and not grounded(value, text):
        nulled.append(where)
        return None
    if isinstance(value, dict):
        props = _branch(schema).get("properties", {})
        return {k: _ground(v, props.get(k, {}), text, f"{where}.{k}" if where else k, nulled)
                for k, v in value.items()}
    if isinstance(value, list):
        items = _branch(schema).get("items", {})
        return [_ground(v, items, text, f"{where}[]", nulled) for v in value]
    return value


_WS = re.compile(r"[ \t\n\r]*")


def _member_spans(s: str, at: int) -> dict[str, tuple[int, int]]:
    """Key -> (start, end) of its value in `s`, for each member of the valid JSON object that
    starts at `s[at]`."""
    decoder, spans = json.JSONDecoder(strict=False), {}
    pos = _WS.match(s, at + 1).end()
    while s[pos] != "}":
        key, pos = json.decoder.scanstring(s, pos + 1, False)
        pos = _WS.match(s, _WS.match(s, pos).end() + 1).end()  # past the colon
        _, end = decoder.raw_decode(s, pos)
        spans[key] = (pos, end)
        pos = _WS.match(s, end).end()
        if s[pos] == ",":
            pos = _WS.match(s, pos + 1).end()
    return spans


def _nullable(schema: dict) -> bool:
    return schema.get("type") == "null" or any(b.get("type") == "null" for b in schema.get("anyOf", []))


def _branch(schema: dict) -> dict:
    """The non-null branch of a nullable schema (the schema itself otherwise)."""
    return next((b for b in schema.get("anyOf", []) if b.get("type") != "null"), schema)


def load_examples(task: LLMTask, directory: Path = EXAMPLES_DIR) -> list[tuple[str, dict]]:
    """Few-shot examples for a topic from `<directory>/<topic>.jsonl` ({"text", "output"} per
    line), each cut to what this task asks for; an example whose label is not one of the
    topic's labels, or whose fields do not match the topic's field record, is left out."""
    path = directory / f"{task.name}.jsonl"
    if not path.is_file():
        return []
    wanted_fields = list(task.fields["properties"]) if task.fields else None
    examples = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        full, out = row["output"], {}
        if task.labels is not None:
            if full.get("label") not in task.labels.labels:
                continue
            out["label"] = full["label"]
        if task.entity_types is not None:
            out["entities"] = [e for e in full.get("entities", []) if e["type"] in task.entity_types]
        if wanted_fields is not None:
            if sorted(full.get("fields", {})) != sorted(wanted_fields):
                continue
            out["fields"] = {k: full["fields"][k] for k in wanted_fields}
        examples.append((row["text"], out))
    return examples


def task_prompt(task: LLMTask, few_shot: bool = False, examples_dir: Path = EXAMPLES_DIR) -> Prompt:
    """A topic's prompt without its user turn: the system prompt (`instructions`), the start of
    the assistant turn the engine writes (the label's opening, or the object's), and with
    `few_shot` the topic's examples (`load_examples`). Pure: `LLMEngine.add_task` builds the
    chat from it, and the records' stamp digests it (streams/stamp.py)."""
    examples = tuple(load_examples(task, examples_dir)) if few_shot else ()
    return Prompt(instructions(task), LABEL_PREFIX if task.labels is not None else "{", examples)


def instructions(task: LLMTask) -> str:
    lines = [f"You read one message from the {task.name} stream and reply with one JSON object, "
             "nothing else."]
    if task.labels is not None:
        lines.append('"label": the one category that fits the message best:')
        lines += [f"- {label}: {desc}" if desc else f"- {label}" for label, desc in task.labels.descriptions]
    if task.entity_types is not None:
        lines.append('"entities": the personal data in the message, each as {"type", "text"} with '
                     "the text copied exactly as written; types: " + ", ".join(task.entity_types) + ".")
    if task.fields is not None:
        lines.append('"fields":')
        lines += [f"- {name}: {schema.get('description', '')}"
                  for name, schema in task.fields["properties"].items()]
    return "\n".join(lines)


@dataclass
class _Row:
    """One text being decoded: where it is in the batch's KV cache and what it wrote so far."""

    index: int  # its place in the prompts of the `_generate_pass` call
    length: int  # its real tokens in the cache (prefix + prompt + generated): its next position
    matcher: object | None  # its own xgrammar matcher (forked from the topic's)
    tokens: list[int] = field(default_factory=list)
    greedy_p: list[float] = field(default_factory=list)
    dists: list = field(default_factory=list)  # label steps: (top token ids, their probabilities)


def _map_cache(cache, fn) -> None:
    """Apply `fn` to every layer's keys and values ([batch, heads, positions, dim])."""
    if hasattr(cache, "layers"):  # transformers >= 4.56 (4.57 and 5.x)
        for layer in cache.layers:
            layer.keys, layer.values = fn(layer.keys), fn(layer.values)
    else:
        cache.key_cache = [fn(t) for t in cache.key_cache]
        cache.value_cache = [fn(t) for t in cache.value_cache]


def _cache_tensors(cache) -> list[torch.Tensor]:
    if hasattr(cache, "layers"):
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [t for pair in zip(cache.key_cache, cache.value_cache) for t in pair]


def _concat_cache(cache, other) -> None:
    """Append `other`'s rows to `cache` (same number of positions)."""
    extra = iter(_cache_tensors(other))
    _map_cache(cache, lambda t: torch.cat([t, next(extra)], dim=0))


def _widen(cache, mask: torch.Tensor, at: int, width: int) -> torch.Tensor:
    """Insert `width` masked-out positions at `at` (between the shared prefix and the rows' own
    tokens, where the left padding is): positions and RoPE are per row, so nothing moves."""
    if width <= 0:
        return mask

    def pad(t: torch.Tensor) -> torch.Tensor:
        shape = list(t.shape)
        shape[2] = width
        return torch.cat([t[:, :, :at], t.new_zeros(shape), t[:, :, at:]], dim=2)

    _map_cache(cache, pad)
    return torch.cat([mask[:, :at], mask.new_zeros((mask.shape[0], width)), mask[:, at:]], dim=1)


class LLMEngine:
    """Generation for a batch of texts of one topic; see the module docstring."""

    def __init__(self, model, tokenizer, device: torch.device, info: ModelInfo, *,
                 max_new_tokens: int = 160, retry_max_new_tokens: int = 320, max_batch: int = 16,
                 max_tokens: int = 16384, few_shot: bool = False, constrained: bool = True,
                 prefix_cache: bool = True, max_string_chars: int | None = 120,
                 max_entities: int | None = 8, max_entity_chars: int | None = 64,
                 max_input_tokens: int = 1024,
                 examples_dir: Path = EXAMPLES_DIR, load_seconds: float = 0.0,
                 on_dropped_spans: Callable[[str, int], None] | None = None,
                 on_ungrounded: Callable[[str, str], None] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.info = info
        self.max_new_tokens = max_new_tokens
        self.retry_max_new_tokens = max(retry_max_new_tokens, max_new_tokens)
        self.max_batch = max_batch
        self.max_tokens = max_tokens
        self.few_shot = few_shot
        self.constrained = constrained
        self.prefix_cache = prefix_cache
        self.max_string_chars = max_string_chars
        self.max_entities = max_entities
        self.max_entity_chars = max_entity_chars
        self.max_input_tokens = max_input_tokens
        self.examples_dir = examples_dir
        self.load_seconds = load_seconds
        self.on_dropped_spans = on_dropped_spans
        self.on_ungrounded = on_ungrounded  # (topic, field) per value nulled by grounding
        self.tasks: dict[str, _Prepared] = {}
        self.vocab_size = int(model.config.vocab_size)
        stops = {int(t) for t in _as_list(getattr(model.generation_config, "eos_token_id", None))}
        end_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
        stops |= {t for t in (tokenizer.eos_token_id, end_turn) if t is not None}
        if not stops:
            raise ModelLoadError("the LLM's tokenizer and generation config name no end-of-sequence token")
        self.stop_ids = sorted(stops)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.special_ids = frozenset(self.stop_ids) | _special_ids(tokenizer)
        self._check_specials_split()
        self._vocab_strings: list[str] | None = None
        self._tokenizer_info = None
        self._compiler = None
        self.seconds_per_event: dict[str, float] = {}  # per topic: EWMA of measured batches
        self.progress_at = time.monotonic()  # the last prefill or decoding step (or load)

    @classmethod
    def load(cls, ref: str = DEFAULT_LLM, *, cache_dir: Path, device: str = "auto",
             dtype: str = "auto", **options) -> "LLMEngine":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        dev = choose_device(device)
        torch_dtype = choose_llm_dtype(dev, dtype)
        model_dir, info = resolve_llm(ref, cache_dir)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"could not load the LLM {ref!r}: {exc}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"the LLM {ref!r} has no chat template: use an instruct model")
        model.to(dev).eval()
        return cls(model, tokenizer, dev, info, load_seconds=time.perf_counter() - started, **options)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def _check_specials_split(self) -> None:
        """The tokenizer must keep special tokens out of user text when asked (fast tokenizers
        do; one that ignores `split_special_tokens` would let a text close its own turn)."""
        probe = "".join(self.tokenizer.convert_ids_to_tokens(sorted(self.special_ids)))
        if self.special_ids & set(self.user_ids([probe])[0]):
            raise ModelLoadError("the LLM's tokenizer parses special tokens inside user text even "
                                 "with split_special_tokens=True: use a fast tokenizer")

    def user_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The tokens of user texts as plain text: special-token strings are split, not parsed."""
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    # ---- per topic, at start-up ---------------------------------------------------------------

    def add_task(self, task: LLMTask) -> _Prepared:
        """Build the topic's schema, prompt and grammar (compiled once, here)."""
        started = time.perf_counter()
        schema = output_schema(task, self.max_string_chars, self.max_entities, self.max_entity_chars)
        prompt = task_prompt(task, self.few_shot, self.examples_dir)
        messages = [{"role": "system", "content": prompt.system}]
        for text, out in prompt.examples:
            messages += [{"role": "user", "content": text},
                         {"role": "assistant", "content": json.dumps(out, ensure_ascii=False)}]
        forced = prompt.assistant_prefix
        grammar = matcher = None
        if self.constrained:
            import xgrammar as xgr

            if self._compiler is None:
                self._tokenizer_info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids)
                self._compiler = xgr.GrammarCompiler(self._tokenizer_info)
            # Compact JSON, the separators json.dumps writes the few-shot answers with.
            grammar = self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                         separators=(", ", ": "))
            matcher = xgr.GrammarMatcher(grammar)
            if not matcher.accept_string(forced):
                raise ModelLoadError(f"topic {task.name}: the grammar rejects the prefix {forced!r}")
        prepared = _Prepared(task, schema, messages, forced, grammar, matcher, prompt=prompt)
        if task.labels is not None:
            prepared.label_targets = [label + '"' for label in task.labels.labels]
            prepared.label_steps = 1 + max(len(self.tokenizer.encode(t, add_special_tokens=False))
                                           for t in prepared.label_targets)
            self._vocab()  # decoded once, used by every label score
        prefix = self.tokenizer.apply_chat_template(messages, tokenize=False)
        whole = self.prompt_text(prepared, _USER_SLOT)
        if not whole.startswith(prefix) or whole.count(_USER_SLOT) != 1:
            raise ModelLoadError(f"topic {task.name}: the chat template does not render the "
                                 "instructions as a prefix of the prompt and the text once after them")
        opening, closing = whole[len(prefix):].split(_USER_SLOT)
        prepared.prefix_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        prepared.user_open = self.tokenizer(opening, add_special_tokens=False)["input_ids"]
        prepared.user_close = self.tokenizer(closing, add_special_tokens=False)["input_ids"]
        longest = (len(prepared.prefix_ids) + len(prepared.user_open) + self.max_input_tokens
                   + len(prepared.user_close) + self.retry_max_new_tokens)
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context and longest > context:
            raise ModelLoadError(
                f"topic {task.name}: prompt prefix {len(prepared.prefix_ids)} + max input "
                f"{self.max_input_tokens} + retry cap {self.retry_max_new_tokens} tokens = {longest} > "
                f"the model's context {context}: lower STREAMS_LLM_MAX_INPUT_TOKENS")
        if self.prefix_cache:
            prepared.prefix_cache = self._cache(prepared.prefix_ids)
        prepared.compile_seconds = time.perf_counter() - started
        self.tasks[task.name] = prepared
        return prepared

    def prompt_for(self, task_name: str) -> Prompt | None:
        """The prompt a topic's task was prepared with (`add_task`); None for an unknown topic."""
        prepared = self.tasks.get(task_name)
        return None if prepared is None else prepared.prompt

    def _vocab(self) -> list[str]:
        if self._vocab_strings is None:
            self._vocab_strings = self.tokenizer.batch_decode([[i] for i in range(self.vocab_size)])
        return self._vocab_strings

    @torch.inference_mode()
    def _cache(self, prefix_ids: list[int]):
        """The KV cache of the shared prefix (batch 1), copied and repeated per pass."""
        from transformers import DynamicCache

        cache = DynamicCache()
        self.model(input_ids=torch.tensor([prefix_ids], device=self.device), past_key_values=cache,
                   use_cache=True)
        return cache

    @staticmethod
    def prompt_messages(prepared: _Prepared, text: str) -> list[dict]:
        return [*prepared.messages, {"role": "user", "content": text}]

    def prompt_text(self, prepared: _Prepared, text: str) -> str:
        return self.tokenizer.apply_chat_template(self.prompt_messages(prepared, text), tokenize=False,
                                                  add_generation_prompt=True) + prepared.forced

    def prompt_ids(self, task_name: str, texts: Sequence[str]) -> list[list[int]]:
        """Per text, the tokens after the shared prefix: the template's user-turn opening, the
        text's own tokens (`user_ids`: special tokens in it are text), the turn's closing and
        the assistant turn's start."""
        prepared = self.tasks[task_name]
        return [prepared.user_open + ids + prepared.user_close for ids in self.user_ids(texts)]

    # ---- per micro-batch ----------------------------------------------------------------------

    def generate(self, texts: Sequence[str], task_name: str, *,
                 constrained: bool | None = None) -> list[LLMResult | LLMEventError]:
        """One result per text, in order: an `LLMResult`, or the text's own `LLMEventError`
        (too long for the model, output cut off or unusable)."""
        started = time.perf_counter()
        self.progress_at = time.monotonic()
        prepared = self.tasks[task_name]
        constrained = self.constrained if constrained is None else constrained
        results: list[LLMResult | LLMEventError | None] = [None] * len(texts)
        ids: list[list[int]] = []
        pending = []
        for i, user in enumerate(self.user_ids(texts)):
            ids.append(prepared.user_open + user + prepared.user_close)
            if len(user) > self.max_input_tokens:
                results[i] = LLMTooLong(f"the text has {len(user)} tokens; the limit is "
                                        f"{self.max_input_tokens} (STREAMS_LLM_MAX_INPUT_TOKENS)")
            else:
                pending.append(i)
        generated = len(pending)
        for cap in (self.max_new_tokens, self.retry_max_new_tokens):
            cut = []
            if pending:
                outs = self._generate_pass(prepared, [ids[i] for i in pending], cap, constrained)
                for i, (tokens, greedy_p, dists) in zip(pending, outs):
                    if tokens is None:
                        cut.append(i)
                    else:
                        results[i] = self._parse(prepared, texts[i], tokens, greedy_p, dists)
            pending = cut
            if not pending or cap == self.retry_max_new_tokens:
                break
            log.info("topic %s: %d outputs reached %d tokens; retrying them with %d", task_name,
                     len(pending), cap, self.retry_max_new_tokens)
        for i in pending:
            results[i] = LLMTruncated(f"output still cut off at {self.retry_max_new_tokens} new tokens")
        if generated:
            self.observe(task_name, generated, time.perf_counter() - started)
        return results  # type: ignore[return-value]

    # ---- time: batch sizing and liveness --------------------------------------------------------

    def observe(self, task_name: str, events: int, seconds: float) -> None:
        """A batch of `events` texts of a topic took `seconds`: update its time per event."""
        measured = seconds / max(1, events)
        before = self.seconds_per_event.get(task_name)
        if before is None:
            self.seconds_per_event[task_name] = measured
            return
        alpha = ALPHA_SLOWER if measured > before else ALPHA_FASTER
        self.seconds_per_event[task_name] = (1 - alpha) * before + alpha * measured

    def max_events(self, task_name: str, budget_s: float) -> int:
        """Events of a topic the engine is expected to finish within `budget_s` (at least 1)."""
        per_event = self.seconds_per_event.get(task_name)
        if per_event is None:  # neither warmed up nor measured yet
            return 1
        return max(1, int(budget_s / max(per_event, 1e-6)))

    def rows_per_step(self, prefix: int, longest_prompt: int, cap: int) -> int:
        """Rows decoded together: `max_batch`, fewer when rows x (prefix + longest prompt + cap)
        would pass `max_tokens` (the KV cache's size)."""
        return max(1, min(self.max_batch, self.max_tokens // max(1, prefix + longest_prompt + cap)))

    @torch.inference_mode()
    def _generate_pass(self, prepared: _Prepared, prompts: list[list[int]], cap: int, constrained: bool):
        """Greedy decoding of all `prompts`, continuously batched: up to `rows_per_step` rows
        step together; a row that wrote its stop token (or reached `cap`) leaves the batch at
        once and the next prompts (shortest first) take the free places, so no row waits for
        the longest output of its batch. Per prompt: (generated tokens up to the stop token, or
        None when the cap cut it off; greedy-token probabilities; label distributions).

        The KV cache holds [shared prefix][left padding][row's own tokens] per row; padding is
        masked out and each row's positions count only its real tokens, so a row's logits are
        those it would get alone (up to floating-point summation order)."""
        constrained = constrained and prepared.matcher is not None
        prefix = len(prepared.prefix_ids)
        limit = self.rows_per_step(prefix, max(len(p) for p in prompts), cap)
        refill_at = max(1, limit // 4)  # free places before a prefill: fewer, larger prefills
        queue = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        stops = set(self.stop_ids)
        bitmask = None
        if constrained:
            import xgrammar as xgr

            bitmask = xgr.allocate_token_bitmask(limit, self.vocab_size)
        results: list = [None] * len(prompts)
        rows: list[_Row] = []
        cache = mask = logits = None
        stats = {"steps": 0, "row_steps": 0, "prefills": 0, "max_rows": 0, "grammar_s": 0.0,
                 "forward_s": 0.0}
        while queue or rows:
            if queue and (not rows or limit - len(rows) >= refill_at):
                take, queue = queue[: limit - len(rows)], queue[limit - len(rows):]
                started = time.perf_counter()
                new_cache, new_mask, new_logits = self._prefill(prepared, [prompts[i] for i in take])
                stats["forward_s"] += time.perf_counter() - started
                self.progress_at = time.monotonic()
                stats["prefills"] += 1
                rows += [_Row(i, prefix + len(prompts[i]), prepared.matcher.fork() if constrained else None)
                         for i in take]
                if cache is None:
                    cache, mask, logits = new_cache, new_mask, new_logits
                else:
                    mask = _widen(cache, mask, prefix, new_mask.shape[1] - mask.shape[1])
                    new_mask = _widen(new_cache, new_mask, prefix, mask.shape[1] - new_mask.shape[1])
                    _concat_cache(cache, new_cache)
                    mask = torch.cat([mask, new_mask])
                    logits = torch.cat([logits, new_logits])
            stats["max_rows"] = max(stats["max_rows"], len(rows))
            next_ids, greedy_p, tops = self._choose(prepared, rows, logits, bitmask, stats)
            keep = []
            for k, row in enumerate(rows):
                token = next_ids[k]
                if len(row.tokens) < prepared.label_steps:
                    row.dists.append(tops.pop(0))
                row.tokens.append(token)
                row.greedy_p.append(greedy_p[k])
                if token in stops:
                    results[row.index] = (row.tokens[:-1], row.greedy_p[:-1], row.dists)
                elif len(row.tokens) >= cap:
                    results[row.index] = (None, None, None)
                else:
                    if row.matcher is not None:
                        row.matcher.accept_token(token)
                    keep.append(k)
            stats["steps"] += 1
            stats["row_steps"] += len(rows)
            if len(keep) < len(rows):
                rows = [rows[k] for k in keep]
                if not rows:
                    cache = mask = logits = None
                    continue
                index = torch.tensor(keep, device=mask.device)
                _map_cache(cache, lambda t: t.index_select(0, index))
                mask = mask.index_select(0, index)
                gap = int(mask[:, prefix:].any(dim=0).int().argmax())  # padding every row has
                if gap:
                    _map_cache(cache, lambda t: torch.cat([t[:, :, :prefix], t[:, :, prefix + gap:]], dim=2))
                    mask = torch.cat([mask[:, :prefix], mask[:, prefix + gap:]], dim=1)
                next_ids = [next_ids[k] for k in keep]
            started = time.perf_counter()
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = torch.tensor([[row.length] for row in rows], device=self.device)
            out = self.model(input_ids=torch.tensor([[t] for t in next_ids], device=self.device),
                             attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=True)
            logits = out.logits[:, -1]
            for row in rows:
                row.length += 1
            stats["forward_s"] += time.perf_counter() - started
            self.progress_at = time.monotonic()
        self.last_pass = stats
        if stats["steps"]:  # the batch fill: the mean over the pass's decoding steps, one value
            inference_thread.batch_filled(stats["row_steps"], stats["steps"] * limit, "llm")
        return results

    def _prefill(self, prepared: _Prepared, prompts: list[list[int]]):
        """The prompts' forward pass (left-padded after the shared prefix, whose KV cache is
        reused): their cache, mask and next-token logits."""
        from transformers import DynamicCache

        prefix = prepared.prefix_ids
        longest = max(len(p) for p in prompts)
        width = len(prefix) + longest
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        input_ids[:, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
        mask[:, : len(prefix)] = 1
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache, start = DynamicCache(), 0
        if prepared.prefix_cache is not None:
            try:
                cache = copy.deepcopy(prepared.prefix_cache)
                if len(prompts) > 1:
                    cache.batch_repeat_interleave(len(prompts))
                start = len(prefix)
            except (AttributeError, TypeError, NotImplementedError) as exc:  # a cache API that moved
                log.warning("prefix KV cache unavailable with this transformers (%s): computing the "
                            "prefix in every pass", type(exc).__name__)
                prepared.prefix_cache, cache = None, DynamicCache()
        mask = mask.to(self.device)
        out = self.model(input_ids=input_ids[:, start:].to(self.device), attention_mask=mask,
                         position_ids=positions[:, start:].to(self.device), past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        return cache, mask, out.logits[:, -1]

    def _choose(self, prepared: _Prepared, rows: list[_Row], logits: torch.Tensor, bitmask, stats):
        """Each row's next token under its grammar (greedy), that token's probability, and for
        rows still in their label steps the 64 likeliest tokens (under the grammar a label step
        allows fewer than that, so this is the whole support)."""
        scores = logits.float()
        if bitmask is not None:
            import xgrammar as xgr

            started = time.perf_counter()
            for k, row in enumerate(rows):
                row.matcher.fill_next_token_bitmask(bitmask, k)
            mask = bitmask[: len(rows)]
            if scores.device.type in ("cpu", "cuda"):
                xgr.apply_token_bitmask_inplace(scores, mask.to(scores.device))
            else:  # xgrammar's kernels run on CPU and CUDA only
                host = scores.cpu()
                xgr.apply_token_bitmask_inplace(host, mask)
                scores = host.to(scores.device)
            stats["grammar_s"] += time.perf_counter() - started
        probs = torch.softmax(scores, dim=-1)
        greedy_p, next_ids = probs.max(dim=-1)
        labelling = [k for k, row in enumerate(rows) if len(row.tokens) < prepared.label_steps]
        tops = []
        if labelling:
            top = torch.topk(probs[labelling], min(64, probs.shape[-1]), dim=-1)
            tops = list(zip(top.indices.cpu().tolist(), top.values.cpu().tolist()))
        return next_ids.cpu().tolist(), greedy_p.cpu().tolist(), tops


    def _parse(self, prepared: _Prepared, text: str, tokens: list[int], greedy_p: list[float],
               dists) -> LLMResult | LLMOutputError:
        output = prepared.forced + self.tokenizer.decode(tokens, skip_special_tokens=True)
        try:
            # strict=False: a control character inside a string is text. xgrammar's strings
            # with a maxLength admit any but quote, backslash, CR and LF (a tab, say), which
            # strict JSON refuses: the event was dead-lettered llm_invalid_output.
            parsed = json.loads(output, strict=False)
        except json.JSONDecodeError as exc:
            return LLMOutputError(f"output is not JSON: {exc.msg} at {exc.pos}")
        if not isinstance(parsed, dict):
            return LLMOutputError("output is not a JSON object")
        task = prepared.task
        classification = entities = fields = confidence = None
        dropped, nulled = 0, []
        try:
            if task.labels is not None:
                classification = self._label_scores(prepared, tokens, dists, parsed["label"])
            ends = (self._token_ends(prepared, tokens)
                    if task.entity_types is not None or task.fields is not None else [])
            if task.entity_types is not None:
                entities, dropped = self._entities(prepared, text, ends, greedy_p, output, parsed["entities"])
            if task.fields is not None:
                fields = parsed["fields"]
                if not isinstance(fields, dict):
                    raise TypeError("fields is not an object")
                schema = prepared.schema["properties"]["fields"]
                fields = _ground(_finite(fields, schema), schema, text, "", nulled)
                confidence = self._field_confidence(output, ends, greedy_p)
        except (KeyError, TypeError, ValueError) as exc:
            return LLMOutputError(f"output does not follow the schema: {type(exc).__name__}: {exc}")
        if dropped and self.on_dropped_spans is not None:
            self.on_dropped_spans(task.name, dropped)
        if self.on_ungrounded is not None:
            for name in nulled:
                self.on_ungrounded(task.name, name)
        return LLMResult(classification, entities, fields, len(tokens) + 1, dropped, confidence, nulled)

    def _field_confidence(self, output: str, ends: list[int], greedy_p: list[float]) -> dict[str, float]:
        """Per top-level typed field: the product of the probabilities of the tokens that wrote
        its value (quotes included: the token that opens a string is the choice against null)."""
        start, _ = _member_spans(output, 0)["fields"]
        return {name: math.exp(sum(self._span_log_ps(ends, greedy_p, a, b)))
                for name, (a, b) in _member_spans(output, start).items()}

    def _label_scores(self, prepared: _Prepared, tokens: list[int], dists, chosen: str) -> Classification:
        labels = prepared.task.labels.labels
        targets = prepared.label_targets
        if chosen not in labels:
            raise ValueError(f"label {chosen!r} is not one of the topic's labels")
        vocab = self._vocab()
        mass = [0.0] * len(labels)
        alive = list(range(len(labels)))
        spelled, weight = "", 1.0
        for step, (ids, probs) in enumerate(dists):
            if step >= len(tokens):
                break
            taken = tokens[step]
            taken_p, taken_labels = 0.0, []
            for tok, p in zip(ids, probs):
                if p <= 0.0:
                    continue
                s = spelled + vocab[tok]
                fits = [k for k in alive if targets[k].startswith(s) or s.startswith(targets[k])]
                if tok == taken:
                    taken_p, taken_labels = p, fits
                elif fits:
                    for k in fits:
                        mass[k] += weight * p / len(fits)
            weight *= taken_p
            spelled += vocab[taken]
            alive = taken_labels
            if len(alive) <= 1:
                break
        for k in alive:  # the greedy path's remaining mass, to the label(s) it still spells
            mass[k] += weight / max(1, len(alive))
        total = sum(mass)
        if total <= 0:  # unconstrained output that left the label vocabulary entirely
            scores = {label: 1.0 / len(labels) for label in labels}
        else:
            scores = {label: m / total for label, m in zip(labels, mass)}
        ordered = dict(sorted(scores.items(), key=lambda kv: -kv[1]))
        # The record's label is the likeliest one. Greedy decoding wrote `chosen`, which is the
        # same label unless the mass of another label was spread over several tokenizations.
        best = next(iter(ordered))
        return Classification(best, ordered[best], ordered)

    def _entities(self, prepared: _Prepared, text: str, ends: list[int], greedy_p: list[float],
                  output: str, items) -> tuple[list[Entity], int]:
        """Offsets of each entity's text in the input (the next occurrence not already taken by
        an identical entity); entities that do not occur verbatim are dropped and counted.
        `ends`: `_token_ends` of the output's tokens."""
        entities: list[Entity] = []
        dropped = 0
        next_from: dict[str, int] = {}
        search_out = 0
        for item in items:
            label, value = item["type"], item["text"]
            if label not in prepared.task.entity_types:
                raise ValueError(f"entity type {label!r} is not allowed")
            quoted = '"text": ' + json.dumps(value, ensure_ascii=False)
            at = output.find(quoted, search_out)
            if at >= 0:
                search_out = at + len(quoted)
            start = text.find(value, next_from.get(value, 0)) if value else -1
            if start < 0:
                dropped += 1
                continue
            next_from[value] = start + len(value)
            score = self._span_score(ends, greedy_p, at + len('"text": "'), at + len(quoted) - 1) \
                if at >= 0 else 0.0
            entities.append(Entity(label, value, start, start + len(value), score))
        entities.sort(key=lambda e: (e.start, e.end))
        return entities, dropped

    def _token_ends(self, prepared: _Prepared, tokens: list[int]) -> list[int]:
        """End offset, in the output string (forced prefix included), of each generated token."""
        base = len(prepared.forced)
        return [base + len(self.tokenizer.decode(tokens[: k + 1], skip_special_tokens=True))
                for k in range(len(tokens))]

    @staticmethod
    def _span_log_ps(ends: list[int], greedy_p: list[float], start: int, end: int) -> list[float]:
        """Log-probabilities of the tokens that wrote `output[start:end]`."""
        first = bisect.bisect_right(ends, start)
        last = min(bisect.bisect_left(ends, end), len(greedy_p) - 1)
        return [math.log(max(p, 1e-12)) for p in greedy_p[first : last + 1]]

    @classmethod
    def _span_score(cls, ends: list[int], greedy_p: list[float], start: int, end: int) -> float:
        """An entity's score: the geometric mean of its tokens' probabilities."""
        logs = cls._span_log_ps(ends, greedy_p, start, end)
        return math.exp(sum(logs) / len(logs)) if logs else 1.0

    def warm_up(self) -> float:
        """Per topic, one short generation (lazy set-up out of the first batch's latency), then
        a timed one that seeds the topic's time per event as one text alone running to the
        token cap and again to the retry cap: the worst case, so the first batches are small
        and never too long; measured batches then take over."""
        started = time.perf_counter()
        for name, prepared in self.tasks.items():  # a few steps: the grammar, the cache, the kernels
            ids = self.prompt_ids(name, ["hello"])
            self._generate_pass(prepared, ids, 4, self.constrained)
            timed = time.perf_counter()
            self._generate_pass(prepared, ids, 8, self.constrained)
            step_s = (time.perf_counter() - timed) / max(1, self.last_pass["steps"])
            self.seconds_per_event[name] = step_s * (self.max_new_tokens + self.retry_max_new_tokens)
        seconds = time.perf_counter() - started
        self.load_seconds += seconds
        return seconds


def _special_ids(tokenizer) -> frozenset[int]:
    """The ids of the tokenizer's special tokens (named and added as special)."""
    ids = set(tokenizer.all_special_ids)
    ids |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False)}
    return frozenset(ids)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
