"""`factory eval`: every model × every benchmark, k samples per problem at T=0.6 / top-p 0.95 through the vLLM
teacher backend (or an OpenAI-compatible server: factory.eval.backends), scored by the same rewards as `verify`
(code benchmarks in its sandbox: factory.eval.code); per-sample Parquet in `DIR/eval/`, `summary.json` with
pass@1 (± SE over problems), cons@k, mean length and truncation rate, and a comparison table on the console.

Each (model, benchmark) pair is one work unit of the shard runner, so a stopped eval resumes pair by pair. A LoRA
adapter is merged into its base once (cached by the adapter's content hash) so vLLM serves it as a plain model.
"""
from __future__ import annotations

import gc
import hashlib
import os
import shutil
from pathlib import Path

from factory.config import PipelineConfig
from factory.core.config import dump_config
from factory.core.progress import console, stage_progress
from factory.core.schema import load_schema
from factory.core.shards import ShardResult, StageDir, fingerprint, list_parts
from factory.eval.backends import served_weights, server_config, start_server_teacher, uses_chat_api
from factory.eval.benchmarks import load_benchmark
from factory.eval.config import EvalConfig, EvalModel, check_adapter, resolve_local
from factory.eval.metrics import print_comparison, read_verdicts, summarize, write_summary
from factory.eval.table import print_r1_table, r1_table, write_r1_table
from factory.generate.config import SamplingConfig, VLLMTeacherConfig
from factory.generate.stage import build_request, trace_rows
from factory.generate.teachers.base import TeacherError

STAGE = "eval"
SCORE_COLUMNS = ("reward_accuracy", "accuracy_verdict", "accuracy_reason", "extracted_answer", "reward_format",
                 "format_verdict")


def _resolve(path: str, run_dir: Path, dtype: str = "bfloat16") -> str:
    """A model name → what vLLM loads; "embedded" is its bf16 copy (what vLLM runs: no cast at load), or with
    dtype="float32" the copy SFT trains on (the base an adapter is merged into)."""
    if path == "embedded":
        from factory.core.embedded import embedded_model_dir

        return str(embedded_model_dir(dtype=dtype))
    local = resolve_local(path, run_dir)
    return str(local.resolve()) if local is not None else path


def _content_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("adapter_*")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _model_weights(model: EvalModel, run_dir: Path) -> tuple[str, str]:
    """(folder or Hub id vLLM loads, identity for the fingerprint); adapters are merged into their base once."""
    if model.adapter is None:
        path = _resolve(model.path, run_dir)
        weights = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
        # a retrained student in the same folder must not reuse the old results
        stamp = ",".join(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
        return path, f"{path}@{hashlib.sha256(stamp.encode()).hexdigest()[:12]}" if stamp else path
    base = _resolve(model.base, run_dir, dtype="float32")  # the student's own base, merged at full precision
    adapter = Path(_resolve(model.adapter, run_dir))
    check_adapter(model.model_copy(update={"base": base, "adapter": str(adapter)}), run_dir)
    digest = _content_hash(adapter)
    target = run_dir / STAGE / "merged" / f"{model.name}-{digest}"
    if not (target / "config.json").exists():
        _merge(base, adapter, target)
    return str(target), f"{base}+adapter:{digest}"


def _merge(base: str, adapter: Path, target: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(tmp, safe_serialization=True)
    tok_src = adapter if (adapter / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def _engine_config(cfg: PipelineConfig, ecfg: EvalConfig, weights: str) -> VLLMTeacherConfig:
    base = dump_config(cfg.teacher) if isinstance(cfg.teacher, VLLMTeacherConfig) else {}
    base.pop("backend", None)
    return VLLMTeacherConfig.model_validate({**base, **ecfg.engine, "model": weights})


def run_eval(cfg: PipelineConfig, out_dir: Path, *, new_run: bool = False, teachers: dict | None = None) -> dict:
    """Evaluate; `teachers` maps model names to already-started engines (tests share one)."""
    ecfg: EvalConfig | None = cfg.eval
    if ecfg is None:
        raise ValueError("the pipeline has no `eval:` block")
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sampling = SamplingConfig(n=ecfg.k, temperature=ecfg.temperature, top_p=ecfg.top_p, max_tokens=ecfg.max_tokens,
                              seed=ecfg.seed)
    benchmarks = [(b, load_benchmark(b, ecfg.limit_for(b), run_dir)) for b in ecfg.benchmarks]
    shared = teachers or {}
    servers = {m.name: server_config(m, ecfg) for m in ecfg.models}
    served = {served_weights(s)[0]: s for s in servers.values() if s is not None}
    models = [(m, m.name, m.name) if m.name in shared else (m, *served_weights(servers[m.name])) if servers[m.name]
              else (m, *_model_weights(m, run_dir)) for m in ecfg.models]
    templates = [m.template or ecfg.template or cfg.template for m in ecfg.models]
    units = [(mi, bi) for mi in range(len(models)) for bi in range(len(benchmarks))]
    # the weights are the input (a retrained student is a re-run input: `factory run` redoes eval, saying so)
    inputs = {f"model:{m.name}": {"weights": ident} for m, _, ident in models}
    config = {"models": [{"name": m.name, "template": dump_config(t)} for (m, _, _), t in zip(models, templates)],
              "sampling": dump_config(sampling), "vote_ties": ecfg.vote_ties, "verify": dump_config(cfg.verify)}
    plan = {"benchmarks": [{"name": b.name, **({"k": b.k} if b.k is not None else {}),
                            "problems": fingerprint([(p["id"], p["problem"], p["answer"], *([p["tests"]] if p.get(
                                "tests") else [])) for p in probs])} for b, probs in benchmarks]}
    stage = StageDir(run_dir / STAGE, STAGE, load_schema("eval"), key_columns=("model", "prompt_id", "sample_idx"))
    stage.prepare(fingerprint({"config": config, "plan": plan}), config, plan, new_run, inputs=inputs, prefix="eval.")
    done = stage.ledger()
    # One engine per distinct set of weights: models that differ only in their template share it.
    with stage_progress(STAGE, total_units=len(units), done_units=len(done), unit_label="pairs") as progress:
        for weights in dict.fromkeys(w for _, w, _ in models):
            todo = [u for u, (mi, _b) in enumerate(units) if models[mi][1] == weights and u not in done]
            if not todo:
                continue
            name = models[units[todo[0]][0]][0].name
            own = name not in shared
            teacher = shared[name] if not own else start_server_teacher(served[weights]) if weights in served \
                else _start(cfg, ecfg, weights, sampling)
            try:
                for u in todo:
                    mi, bi = units[u]
                    model = models[mi][0]
                    bench, problems = benchmarks[bi]
                    bench_sampling = sampling.model_copy(update={"n": ecfg.k_for(bench)})
                    rows = _eval_pair(teacher, model.name, bench.name, bench.domain, problems, templates[mi],
                                      bench_sampling, cfg)
                    stage.commit_result(u, ShardResult(rows=rows))
                    correct = sum(r["reward_accuracy"] >= 1 for r in rows)
                    progress.advance(rows=len(rows), tokens=sum(r["completion_tokens"] or 0 for r in rows))
                    console.print(f"eval: {model.name} × {bench.name}: {correct}/{len(rows)} samples correct")
            finally:
                if own:
                    teacher.close()
                    del teacher
                    gc.collect()
    records = read_verdicts(list_parts(stage.path))
    summary = summarize(records, ties=ecfg.vote_ties)
    write_summary(summary, stage.path)
    if ecfg.table == "r1":
        table = r1_table(summary, [{"name": b.name, "domain": b.domain, "table_column": b.table_column}
                                   for b, _ in benchmarks])
        write_r1_table(table, stage.path)
    counts = stage.finalize(records_in=sum(len(p) * ecfg.k_for(b) for b, p in benchmarks) * len(models),
                            extra={"summary_file": "summary.json", "models": len(models),
                                   "benchmarks": len(benchmarks), "k": ecfg.k})
    print_comparison(summary, console)
    if ecfg.table == "r1":
        print_r1_table(table, console)
    return counts


def _start(cfg: PipelineConfig, ecfg: EvalConfig, weights: str, sampling: SamplingConfig):
    from factory.generate.teachers import make_teacher

    try:
        return make_teacher(_engine_config(cfg, ecfg, weights), sampling, cfg.executor)
    except TeacherError as exc:
        raise TeacherError(f"eval: model {weights} could not be loaded: {exc}") from exc


def _eval_pair(teacher, model_name: str, bench_name: str, domain: str, problems: list[dict], template,
               sampling: SamplingConfig, cfg: PipelineConfig) -> list[dict]:
    from factory.eval.scoring import score_samples

    tokenizer, chat_api = teacher.tokenizer(), uses_chat_api(teacher)
    prompts, texts, requests = {}, {}, []
    for p in problems:
        record = {"prompt_id": f"{bench_name}/{p['id']}", "source": bench_name, "domain": domain,
                  "problem": p["problem"], "answer": p["answer"], "tests": p.get("tests"), "language": "en",
                  "metadata": None}
        req, text = build_request(record, template, tokenizer, chat_api=chat_api)
        prompts[record["prompt_id"]], texts[record["prompt_id"]] = record, text
        requests.append(req)
    results = {r.key: r for r in teacher.generate(requests, sampling)}
    traces = [row for pid, record in prompts.items()
              for row in trace_rows(record, texts[pid], results[pid], template, sampling, teacher.model_id)]
    return [{**row, **{c: scored.get(c) for c in SCORE_COLUMNS}, "model": model_name, "benchmark": bench_name}
            for row, scored in zip(traces, score_samples(traces, cfg.verify))]
