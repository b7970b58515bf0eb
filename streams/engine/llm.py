"""The LLM engine: a local instruct causal LM that labels a text, lists its entities and fills a
topic's typed fields, in one JSON object per text, decoded under a grammar so it is valid by
construction.

Per topic (`LLMTask`), compiled once at start-up: a JSON Schema (label enum = the topic's labels,
entity type enum, the fields' schema from their Avro record), its xgrammar grammar, and a chat
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

An output cut off by the token cap gets one retry with `retry_max_new_tokens`; still cut off, it
is an `LLMTruncated` for that text alone (the pipeline dead-letters it as `llm_truncated`)."""

from __future__ import annotations

import bisect
import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .llm_loading import DEFAULT_LLM, choose_llm_dtype, resolve_llm
from .loading import ModelLoadError, choose_device
from .types import Classification, Entity, LabelSet, ModelInfo

log = logging.getLogger("streams.engine.llm")

# The personal-data types of the Rampart NER (BIO prefixes dropped): the LLM's default entity set,
# so a topic gets the same entity vocabulary whichever model extracts it.
RAMPART_ENTITY_TYPES = ("GIVEN_NAME", "SURNAME", "EMAIL", "PHONE", "URL", "TAX_ID", "BANK_ACCOUNT",
                        "ROUTING_NUMBER", "GOVERNMENT_ID", "PASSPORT", "DRIVERS_LICENSE",
                        "BUILDING_NUMBER", "STREET_NAME", "SECONDARY_ADDRESS", "CITY", "STATE",
                        "ZIP_CODE")
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
LABEL_PREFIX = '{"label": "'


class LLMOutputError(Exception):
    """One text's output could not be used (unconstrained output that is not the schema's JSON)."""

    reason = "llm_invalid_output"


class LLMTruncated(LLMOutputError):
    """One text's output was still cut off by the token cap after the retry with a larger cap."""

    reason = "llm_truncated"


@dataclass(frozen=True)
class LLMTask:
    """What the LLM produces for one input topic. `None` parts are not asked for."""

    name: str
    labels: LabelSet | None = None
    entity_types: tuple[str, ...] | None = None
    fields: dict | None = None  # the Avro record of the topic's typed fields

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


def output_schema(task: LLMTask) -> dict:
    """The JSON Schema of one output: label first (its tokens are scored), then entities, then
    the typed fields, in that order (xgrammar keeps the properties' order)."""
    from ..serde.fields import json_schema

    props: dict = {}
    if task.labels is not None:
        props["label"] = {"type": "string", "enum": task.labels.labels}
    if task.entity_types is not None:
        props["entities"] = {"type": "array", "items": {
            "type": "object", "properties": {"type": {"type": "string", "enum": list(task.entity_types)},
                                             "text": {"type": "string", "minLength": 1}},
            "required": ["type", "text"], "additionalProperties": False}}
    if task.fields is not None:
        props["fields"] = json_schema(task.fields)
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def load_examples(task: LLMTask, directory: Path = EXAMPLES_DIR) -> list[tuple[str, dict]]:
    """Few-shot examples for a topic from `<directory>/<topic>.jsonl` ({"text", "output"} per
    line), each cut to what this task asks for; an example whose label is not one of the
    topic's labels, or whose fields do not match the topic's field record, is left out."""
    path = directory / f"{task.name}.jsonl"
    if not path.is_file():
        return []
    wanted_fields = [f["name"] for f in task.fields["fields"]] if task.fields else None
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


def instructions(task: LLMTask) -> str:
    from ..serde.fields import field_docs

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
        lines += [f"- {name}: {doc}" for name, doc in field_docs(task.fields)]
    return "\n".join(lines)


class _Recorder:
    """A logits processor for `generate`: applies each row's grammar (xgrammar matchers, one per
    row) and keeps, per step, the probability of the greedy token under the masked distribution
    and, for the first `label_steps` steps, the whole masked distribution's support (for the
    label score). One instance per `generate` call."""

    def __init__(self, prepared: _Prepared, rows: int, vocab_size: int, constrained: bool):
        import xgrammar as xgr

        self.xgr = xgr
        self.constrained = constrained and prepared.matcher is not None
        self.matchers = [prepared.matcher.fork() for _ in range(rows)] if self.constrained else []
        self.bitmask = xgr.allocate_token_bitmask(rows, vocab_size) if self.constrained else None
        self.label_steps = prepared.label_steps
        self.step = 0
        self.greedy_p: list[torch.Tensor] = []
        self.label_dists: list[list[tuple[list[int], list[float]]]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.constrained:
            for i, matcher in enumerate(self.matchers):
                if self.step > 0 and not matcher.is_terminated():
                    matcher.accept_token(int(input_ids[i, -1]))
                if not matcher.is_terminated():
                    matcher.fill_next_token_bitmask(self.bitmask, i)
            device = scores.device
            if device.type not in ("cuda", "cpu"):
                scores = scores.to("cpu")
            self.xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
            scores = scores.to(device)
        probs = torch.softmax(scores.float(), dim=-1)
        self.greedy_p.append(probs.max(dim=-1).values.cpu())
        if self.step < self.label_steps:
            # The 64 likeliest tokens: under the grammar a label step allows fewer than that (so
            # this is the whole support); without it, they carry the label mass that matters.
            top = torch.topk(probs, min(64, probs.shape[-1]), dim=-1)
            rows = list(zip(top.indices.cpu().tolist(), top.values.cpu().tolist()))
            self.label_dists.append(rows)
        self.step += 1
        return scores


class LLMEngine:
    """Generation for a batch of texts of one topic; see the module docstring."""

    def __init__(self, model, tokenizer, device: torch.device, info: ModelInfo, *,
                 max_new_tokens: int = 160, retry_max_new_tokens: int = 320, max_batch: int = 16,
                 max_tokens: int = 16384, few_shot: bool = False, constrained: bool = True,
                 prefix_cache: bool = True,
                 examples_dir: Path = EXAMPLES_DIR, load_seconds: float = 0.0,
                 on_dropped_spans: Callable[[str, int], None] | None = None):
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
        self.examples_dir = examples_dir
        self.load_seconds = load_seconds
        self.on_dropped_spans = on_dropped_spans
        self.tasks: dict[str, _Prepared] = {}
        self.vocab_size = int(model.config.vocab_size)
        stops = {int(t) for t in _as_list(getattr(model.generation_config, "eos_token_id", None))}
        end_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
        stops |= {t for t in (tokenizer.eos_token_id, end_turn) if t is not None}
        if not stops:
            raise ModelLoadError("the LLM's tokenizer and generation config name no end-of-sequence token")
        self.stop_ids = sorted(stops)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self._vocab_strings: list[str] | None = None
        self._tokenizer_info = None
        self._compiler = None

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

    # ---- per topic, at start-up ---------------------------------------------------------------

    def add_task(self, task: LLMTask) -> _Prepared:
        """Build the topic's schema, prompt and grammar (compiled once, here)."""
        started = time.perf_counter()
        schema = output_schema(task)
        messages = [{"role": "system", "content": instructions(task)}]
        if self.few_shot:
            for text, out in load_examples(task, self.examples_dir):
                messages += [{"role": "user", "content": text},
                             {"role": "assistant", "content": json.dumps(out, ensure_ascii=False)}]
        forced = LABEL_PREFIX if task.labels is not None else "{"
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
        prepared = _Prepared(task, schema, messages, forced, grammar, matcher)
        if task.labels is not None:
            prepared.label_targets = [label + '"' for label in task.labels.labels]
            prepared.label_steps = 1 + max(len(self.tokenizer.encode(t, add_special_tokens=False))
                                           for t in prepared.label_targets)
            self._vocab()  # decoded once, used by every label score
        prefix = self.tokenizer.apply_chat_template(messages, tokenize=False)
        if not self.prompt_text(prepared, "x").startswith(prefix):
            raise ModelLoadError(f"topic {task.name}: the chat template does not render the "
                                 "instructions as a prefix of the prompt")
        prepared.prefix_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        if self.prefix_cache:
            prepared.prefix_cache = self._cache(prepared.prefix_ids)
        prepared.compile_seconds = time.perf_counter() - started
        self.tasks[task.name] = prepared
        return prepared

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
        """Per text, the tokens after the shared prefix: the user turn and the assistant turn's
        start. The prefix is tokenized once; it ends with a special token, so prefix + suffix
        tokens are the whole prompt's tokens."""
        prepared = self.tasks[task_name]
        n = len(self.tokenizer.apply_chat_template(prepared.messages, tokenize=False))
        suffixes = [self.prompt_text(prepared, t)[n:] for t in texts]
        return self.tokenizer(suffixes, add_special_tokens=False)["input_ids"]

    # ---- per micro-batch ----------------------------------------------------------------------

    def generate(self, texts: Sequence[str], task_name: str, *,
                 constrained: bool | None = None) -> list[LLMResult | LLMOutputError]:
        """One result per text, in order: an `LLMResult`, or the text's own `LLMOutputError`."""
        prepared = self.tasks[task_name]
        constrained = self.constrained if constrained is None else constrained
        ids = self.prompt_ids(task_name, texts) if texts else []
        results: list[LLMResult | LLMOutputError | None] = [None] * len(texts)
        pending = list(range(len(texts)))
        for cap in (self.max_new_tokens, self.retry_max_new_tokens):
            cut = []
            for batch in self._passes(ids, pending, cap, len(prepared.prefix_ids)):
                outs = self._generate_pass(prepared, [ids[i] for i in batch], cap, constrained)
                for i, (tokens, greedy_p, dists) in zip(batch, outs):
                    if tokens is None:
                        cut.append(i)
                    else:
                        results[i] = self._parse(prepared, texts[i], tokens, greedy_p, dists)
            pending = sorted(cut)
            if not pending or cap == self.retry_max_new_tokens:
                break
            log.info("topic %s: %d outputs reached %d tokens; retrying them with %d", task_name,
                     len(pending), cap, self.retry_max_new_tokens)
        for i in pending:
            results[i] = LLMTruncated(f"output still cut off at {self.retry_max_new_tokens} new tokens")
        return results  # type: ignore[return-value]

    def _passes(self, ids: list[list[int]], indices: list[int], cap: int, prefix: int = 0) -> list[list[int]]:
        """Indices sorted by prompt length, cut so a pass holds at most `max_batch` rows and at
        most `max_tokens` tokens (prefix + longest prompt + cap, per row)."""
        order = sorted(indices, key=lambda i: len(ids[i]))
        passes: list[list[int]] = []
        batch: list[int] = []
        for i in order:
            longest = prefix + len(ids[i]) + cap
            if batch and (len(batch) >= self.max_batch or (len(batch) + 1) * longest > self.max_tokens):
                passes.append(batch)
                batch = []
            batch.append(i)
        if batch:
            passes.append(batch)
        return passes

    @torch.inference_mode()
    def _generate_pass(self, prepared: _Prepared, prompts: list[list[int]], cap: int, constrained: bool):
        """Greedy generation of one left-padded pass: per row (generated tokens up to the stop
        token, or None when the cap cut it off; greedy-token probabilities; label distributions)."""
        from transformers import GenerationConfig, LogitsProcessorList

        # [shared prefix][left padding][text's own tokens]: the padding sits between the prefix
        # and each row's tokens, masked out; positions come from the mask's running sum, so each
        # row sees exactly the positions it has alone. The prefix's KV cache is reused as is.
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
        extra = {}
        if prepared.prefix_cache is not None:
            try:
                cache = copy.deepcopy(prepared.prefix_cache)
                if len(prompts) > 1:
                    cache.batch_repeat_interleave(len(prompts))
                extra["past_key_values"] = cache
            except (AttributeError, TypeError, NotImplementedError) as exc:  # a cache API that moved
                log.warning("prefix KV cache unavailable with this transformers (%s): computing the "
                            "prefix in every pass", type(exc).__name__)
                prepared.prefix_cache = None
        recorder = _Recorder(prepared, len(prompts), self.vocab_size, constrained)
        config = GenerationConfig(max_new_tokens=cap, do_sample=False, num_beams=1,
                                  eos_token_id=self.stop_ids, pad_token_id=self.pad_id)
        out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                  generation_config=config, logits_processor=LogitsProcessorList([recorder]),
                                  **extra)
        generated = out[:, width:].cpu()
        greedy = torch.stack(recorder.greedy_p, dim=1) if recorder.greedy_p else None
        stops = set(self.stop_ids)
        rows = []
        for row in range(len(prompts)):
            tokens = generated[row].tolist()
            end = next((k for k, t in enumerate(tokens) if t in stops), None)
            if end is None:
                rows.append((None, None, None))
                continue
            dists = [step[row] for step in recorder.label_dists]
            rows.append((tokens[:end], greedy[row, :end].tolist(), dists))
        return rows

    def _parse(self, prepared: _Prepared, text: str, tokens: list[int], greedy_p: list[float],
               dists) -> LLMResult | LLMOutputError:
        output = prepared.forced + self.tokenizer.decode(tokens, skip_special_tokens=True)
        try:
            parsed = json.loads(output)
        except json.JSONDecodeError as exc:
            return LLMOutputError(f"output is not JSON: {exc.msg} at {exc.pos}")
        if not isinstance(parsed, dict):
            return LLMOutputError("output is not a JSON object")
        task = prepared.task
        classification = entities = fields = None
        dropped = 0
        try:
            if task.labels is not None:
                classification = self._label_scores(prepared, tokens, dists, parsed["label"])
            if task.entity_types is not None:
                entities, dropped = self._entities(prepared, text, tokens, greedy_p, output, parsed["entities"])
            if task.fields is not None:
                fields = parsed["fields"]
                if not isinstance(fields, dict):
                    raise TypeError("fields is not an object")
        except (KeyError, TypeError, ValueError) as exc:
            return LLMOutputError(f"output does not follow the schema: {type(exc).__name__}: {exc}")
        if dropped and self.on_dropped_spans is not None:
            self.on_dropped_spans(task.name, dropped)
        return LLMResult(classification, entities, fields, len(tokens) + 1, dropped)

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

    def _entities(self, prepared: _Prepared, text: str, tokens: list[int], greedy_p: list[float],
                  output: str, items) -> tuple[list[Entity], int]:
        """Offsets of each entity's text in the input (the next occurrence not already taken by
        an identical entity); entities that do not occur verbatim are dropped and counted."""
        ends = self._token_ends(prepared, tokens)
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
    def _span_score(ends: list[int], greedy_p: list[float], start: int, end: int) -> float:
        first = bisect.bisect_right(ends, start)
        last = min(bisect.bisect_left(ends, end), len(greedy_p) - 1)
        ps = [max(p, 1e-12) for p in greedy_p[first : last + 1]] or [1.0]
        return math.exp(sum(math.log(p) for p in ps) / len(ps))

    def warm_up(self) -> float:
        """One short generation per topic: lazy set-up out of the first batch's latency."""
        started = time.perf_counter()
        for name, prepared in self.tasks.items():  # a few steps: the grammar, the cache, the kernels
            self._generate_pass(prepared, self.prompt_ids(name, ["hello"]), 4, self.constrained)
        seconds = time.perf_counter() - started
        self.load_seconds += seconds
        return seconds


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
