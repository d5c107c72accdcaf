"""Contrastive persona selection: each side of a pair gets the candidate persona that its own PI
prompt explains better than the other side's prompt does.

A small PI model reads a pair's topic better than which response was preferred: asked for the
chosen and then the rejected side it often writes the same persona twice. The two PI prompts of a
pair hold the same texts and differ only in which response is marked preferred, so in the
difference of a persona's log-likelihoods under the two prompts what they share (the topic, the
model's favourite phrasing) cancels and what is left is the preference:

    score(c, side) = log p(c | the side's prompt) - weight * log p(c | the other side's prompt)

Per pair (`select_personas`, no engine needed to test it):
1. candidates: the greedy persona and `samples` sampled ones of each side, valid by the persona
   rules, pooled over both sides (one per distinct persona);
2. a side considers only plausible candidates: a mean token probability under its own prompt
   at least `plausibility` times that of its likeliest candidate (contrastive decoding's
   plausibility constraint: a ratio of two small likelihoods says nothing, so a sampled oddity
   cannot win on it);
3. chosen = the plausible candidate with the highest score(c, chosen); rejected = the highest
   score(c, rejected) among the candidates that are not near copies of the chosen one
   (core.persona.near_copy), plausible ones first, so the two differ whenever the pool holds two
   different personas.
With weight 0 this is reranking by likelihood; with 1 (the default) pure contrast.

`ContrastivePI` runs it in one Ray Data actor per engine: vLLM writes the candidates (guided
decoding, prefix caching), and the same model through transformers scores them, each side's
prompt computed once and its KV cache reused for every candidate. A batch of pairs is
self-contained, so the PI job streams and commits as without contrast. vLLM engines only; on a
GPU the scorer holds a second copy of the weights beside vLLM's, so leave it room
(`engine.vllm.gpu_memory_utilization`). Cost: each side samples `samples` more personas (their
prompt is cached) and both prompts are run once more through transformers.

    InferConfig(..., contrast={"samples": 4})   # persona-ray infer ... --set contrast.samples=4
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import Field

from persona_ray.core.persona import near_copy
from persona_ray.core.schema import SIDES
from persona_ray.core.settings import Settings
from persona_ray.inference.parse import parse_persona
from persona_ray.inference.prompt import build_pi_prompt

log = logging.getLogger(__name__)


class ContrastSettings(Settings):
    """Contrastive selection of the two personas of a pair (vLLM engines only)."""

    samples: int = Field(4, ge=1, description="sampled personas per side, beside the greedy one")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the candidates")
    weight: float = Field(1.0, ge=0, le=1, description="how much the other side's likelihood is subtracted "
                          "(0: rerank by likelihood; 1: pure contrast)")
    plausibility: float = Field(0.1, ge=0, le=1, description="a side considers candidates whose mean token "
                                "probability under its prompt is at least this share of its likeliest one's "
                                "(0: every candidate)")


@dataclass
class Candidate:
    persona: str          # the parsed, valid persona
    text: str             # what the model wrote (the record's raw_text)
    token_ids: list[int]  # the tokens it wrote, scored under both prompts


def candidate_pool(outputs: list[tuple[str, list[int], bool]]) -> list[Candidate]:
    """(text, token ids, truncated) of every generation of a pair, both sides -> the valid,
    distinct personas among them, in the order given (greedy outputs first)."""
    pool: dict[str, Candidate] = {}
    for text, token_ids, truncated in outputs:
        parsed = parse_persona(text, truncated=truncated)
        if parsed.valid and parsed.persona not in pool:
            pool[parsed.persona] = Candidate(parsed.persona, text, list(token_ids))
    return list(pool.values())


def select_personas(pool: list[Candidate], logp: dict[str, list[float]], weight: float,
                    plausibility: float = 0.0) -> dict[str, Candidate]:
    """The chosen and rejected persona from a pool scored under both prompts (`logp[side][i]`:
    log-likelihood of pool[i] under that side's prompt; see the module docstring). Ties go to
    the earlier candidate."""
    if not pool:
        return {}
    picked: dict[str, Candidate] = {}
    for side, other in (SIDES, SIDES[::-1]):
        scores = [own - weight * theirs for own, theirs in zip(logp[side], logp[other])]
        mean = [own / max(1, len(c.token_ids)) for own, c in zip(logp[side], pool)]
        floor = max(mean) + math.log(plausibility) if plausibility > 0 else -math.inf
        # Plausible candidates first, each group by score; the rest only when nothing else is left.
        order = sorted(range(len(pool)), key=lambda i: (mean[i] < floor, -scores[i]))
        if side == "rejected":
            distinct = [i for i in order if not near_copy(pool[i].persona, picked["chosen"].persona)]
            order = distinct or order
        picked[side] = pool[order[0]]
    return picked


def sequence_logprobs(model, prompt_ids: list[int], candidates: list[list[int]]) -> list[float]:
    """log p(candidate | prompt) for each candidate: the prompt is run once, and its KV cache is
    cut back to the prompt after each candidate."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        cache, first = out.past_key_values, torch.log_softmax(out.logits[0, -1].float(), -1)
        totals = []
        for ids in candidates:
            if len(ids) == 1:
                totals.append(float(first[ids[0]]))
                continue
            step = model(input_ids=torch.tensor([ids[:-1]]), past_key_values=cache, use_cache=True)
            rest = torch.log_softmax(step.logits[0].float(), -1)
            total = first[ids[0]] + rest.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum()
            totals.append(float(total))
            cache.crop(-(len(ids) - 1))  # back to the prompt alone
    return totals


class ContrastivePI:
    """A Ray Data actor: todo pairs (pair_id, prompt, chosen, rejected, domain, sides) -> one
    engine row per side to write (pair_id, side, domain, generated_text, num_input_tokens,
    num_output_tokens, finish_reason, error), the generated_text being the selected candidate's."""

    def __init__(self, model_path: str, engine, contrast: ContrastSettings, regex: str | None, k_shot: int,
                 exemplars: str | None):
        import torch
        from transformers import AutoModelForCausalLM
        from vllm import LLM

        from persona_ray.engines.vllm_engine import engine_kwargs

        self.engine, self.contrast, self.k_shot, self.exemplars = engine, contrast, k_shot, exemplars
        self.llm = LLM(model=model_path, seed=engine.sampling.seed or 0, **engine_kwargs(engine.vllm))
        self.tokenizer = self.llm.get_tokenizer()
        device = "cuda" if engine.vllm.gpu and torch.cuda.is_available() else "cpu"
        self.scorer = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
        self.params = [self._sampling(regex, temperature=0.0, n=1),
                       self._sampling(regex, temperature=contrast.temperature, n=contrast.samples)]

    def _sampling(self, regex: str | None, temperature: float, n: int):
        """The engine path's sampling parameters (vllm_engine.sampling_params) at `temperature`, n a request."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        from persona_ray.engines.vllm_engine import sampling_params

        params = sampling_params(self.engine.sampling.model_copy(update={"temperature": temperature}), regex, None,
                                 per_request_seed=False)  # the engine is seeded once (vllm_engine)
        if "structured_outputs" in params:
            params["structured_outputs"] = StructuredOutputsParams(**params["structured_outputs"])
        return SamplingParams(n=n, **params)

    def _text(self, prompt: str) -> str:
        if self.engine.prompt_format == "chat":
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def __call__(self, batch: pa.Table) -> pa.Table:
        pairs = batch.to_pylist()
        prompts = [self._text(build_pi_prompt(p["prompt"], p["chosen"], p["rejected"], side, p["domain"],
                                              self.k_shot, self.exemplars))
                   for p in pairs for side in SIDES]
        outputs = self.llm.generate(prompts * 2, [self.params[0]] * len(prompts) + [self.params[1]] * len(prompts),
                                    use_tqdm=False)
        greedy, sampled = outputs[:len(prompts)], outputs[len(prompts):]
        rows = []
        for i, pair in enumerate(pairs):
            sides = {side: (greedy[2 * i + j], sampled[2 * i + j]) for j, side in enumerate(SIDES)}
            try:
                rows += self._pair_rows(pair, sides)
            except Exception as exc:  # noqa: BLE001 - one pair's failure must not fail the batch
                log.warning("pair %s: contrastive selection failed: %s", pair["pair_id"], exc)
                rows += [_row(pair, side, "", 0, 0, "error", f"contrastive selection: {exc}")
                         for side in _todo_sides(pair)]
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)

    def _pair_rows(self, pair: dict, sides: dict) -> list[dict]:
        generations = [(o.text, list(o.token_ids), o.finish_reason == "length")
                       for request in (sides["chosen"][0], sides["rejected"][0], sides["chosen"][1],
                                       sides["rejected"][1])
                       for o in request.outputs]
        pool = candidate_pool(generations)
        logp = {side: sequence_logprobs(self.scorer, list(sides[side][0].prompt_token_ids),
                                        [c.token_ids for c in pool]) if pool else []
                for side in SIDES}
        picked = select_personas(pool, logp, self.contrast.weight, self.contrast.plausibility)
        rows = []
        for side in _todo_sides(pair):
            greedy = sides[side][0]
            generated = sum(len(o.token_ids) for request in sides[side] for o in request.outputs)
            if side in picked:
                rows.append(_row(pair, side, picked[side].text, len(greedy.prompt_token_ids), generated, "stop", ""))
            else:  # no valid candidate: the greedy text, so the record says why it is not valid
                first = greedy.outputs[0]
                rows.append(_row(pair, side, first.text, len(greedy.prompt_token_ids), generated,
                                 "length" if first.finish_reason == "length" else "stop", ""))
        return rows


ROW_SCHEMA = pa.schema([("pair_id", pa.string()), ("side", pa.string()), ("domain", pa.string()),
                        ("generated_text", pa.string()), ("num_input_tokens", pa.int64()),
                        ("num_output_tokens", pa.int64()), ("finish_reason", pa.string()), ("error", pa.string())])


def _todo_sides(pair: dict) -> list[str]:
    return pair["sides"].split(",") if pair["sides"] else []


def _row(pair: dict, side: str, text: str, input_tokens: int, output_tokens: int, finish: str, error: str) -> dict:
    return {"pair_id": pair["pair_id"], "side": side, "domain": pair["domain"], "generated_text": text,
            "num_input_tokens": input_tokens, "num_output_tokens": output_tokens, "finish_reason": finish,
            "error": error}


def contrastive_generate(todo, cfg, model_path: str, regex: str | None):
    """The todo pairs through a pool of ContrastivePI actors (Ray Data); engine rows out."""
    from persona_ray.engines.vllm_engine import engine_env

    vllm = cfg.engine.vllm
    resources: dict[str, Any] = {"num_gpus": vllm.tensor_parallel_size} if vllm.gpu else \
        {"num_cpus": vllm.cpus_per_engine}
    # A batch of pairs asks about as many generations as an engine batch does (each pair makes
    # 2 x (1 + samples)), and is a block of its own: an actor hands back a block's rows only when
    # the whole block is done, so results reach storage a batch at a time (engines/__init__.py).
    pairs_per_batch = max(1, vllm.batch_size // (2 * (1 + cfg.contrast.samples)))
    todo = todo.repartition(target_num_rows_per_block=pairs_per_batch, strict=True)
    return todo.map_batches(
        ContrastivePI, fn_constructor_args=(model_path, cfg.engine, cfg.contrast, regex, cfg.k_shot, cfg.exemplars),
        batch_size=pairs_per_batch, batch_format="pyarrow", concurrency=vllm.concurrency,
        runtime_env={"env_vars": engine_env(vllm)}, **resources)
