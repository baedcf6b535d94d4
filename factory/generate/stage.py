"""`factory generate`: prompts → k teacher samples per prompt → `DIR/generate/part-NNNNN.parquet` (trace schema)."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from factory.config import PipelineConfig
from factory.core.config import dump_config
from factory.core.progress import console, stage_progress
from factory.core.ray_cluster import join_cluster
from factory.core.schema import load_schema
from factory.core.shards import ShardResult, StageDir, fingerprint, write_json_atomic
from factory.curate.decontam_plan import (
    decontam_counts,
    decontam_summary,
    decontaminate_prompts,
    pipeline_decontam,
)
from factory.generate.config import TEACHER_SPEED_ONLY, OpenAITeacherConfig, SamplingConfig
from factory.generate.sources import load_prompts
from factory.generate.teachers import GenRequest, GenResult, Teacher, TeacherError, make_teacher
from factory.generate.templates import (
    TemplateConfig,
    chat_messages,
    instructions_for,
    prefill_for,
    render_chat,
    render_jinja,
    render_r1_zero,
    split_think,
)

STAGE = "generate"


def build_request(prompt: dict, t: TemplateConfig, tokenizer, chat_api: bool = False) -> tuple[GenRequest, str]:
    """The request for one prompt and the prompt text as recorded (for the chat API: the messages as JSON)."""
    prefill, instructions = prefill_for(prompt, t), instructions_for(prompt, t)  # the prompt's track
    if chat_api:
        if t.kind != "chat":
            raise ValueError(f"template.kind={t.kind} needs teacher.api=completions (the chat API templates itself)")
        messages = chat_messages(prompt, instructions, t.system, t.fewshot)
        return GenRequest(key=prompt["prompt_id"], messages=messages, prefill=prefill), json.dumps(
            messages + ([{"role": "assistant", "content": prefill}] if prefill else []), ensure_ascii=False)
    if t.kind == "chat":
        text = render_chat(prompt, instructions, tokenizer, prefill, t.system, t.fewshot)
    elif t.kind == "r1_zero":
        text = render_r1_zero(prompt, instructions) + prefill
    else:
        source = t.jinja if t.jinja is not None else Path(t.jinja_file).read_text() if t.jinja_file else None
        if source is None:
            raise ValueError("template.kind=jinja needs template.jinja or template.jinja_file")
        text = render_jinja(prompt, instructions, source) + prefill
    return GenRequest(key=prompt["prompt_id"], prompt=text, prefill=prefill), text


def uses_chat_api(cfg: PipelineConfig) -> bool:
    return isinstance(cfg.teacher, OpenAITeacherConfig) and cfg.teacher.api == "chat"


def trace_rows(prompt: dict, prompt_text: str, result: GenResult, template: TemplateConfig, sampling_cfg: SamplingConfig,
               teacher_id: str) -> list[dict]:
    sampling = json.dumps(dump_config(sampling_cfg), sort_keys=True)
    rows = []
    for idx, s in enumerate(result.samples):
        if s.reasoning is not None:  # the server split the reasoning off: restore the <think> form
            completion = f"<think>\n{s.reasoning}\n</think>\n\n{s.text}"
        else:
            completion = prefill_for(prompt, template) + s.text
        split = split_think(completion)
        rows.append({**prompt, "sample_idx": idx, "teacher": teacher_id, "sampling": sampling,
                     "template": template.kind, "prompt_text": prompt_text, "completion": completion,
                     "reasoning": split.reasoning, "answer_text": split.answer_text,
                     "think_closed": split.think_closed, "finish_reason": s.finish_reason,
                     "prompt_tokens": result.prompt_tokens, "completion_tokens": s.completion_tokens,
                     "latency_s": result.latency_s, "error": s.error})
    return rows


def generate_fingerprint(cfg: PipelineConfig) -> dict:
    """Everything that decides the traces (not the shard size or concurrency, which only decide speed)."""
    teacher = dump_config(cfg.teacher)
    for speed_only in TEACHER_SPEED_ONLY:
        teacher.pop(speed_only, None)
    return {"teacher": teacher, "sampling": dump_config(cfg.sampling), "template": dump_config(cfg.template)}


def run_generate(cfg: PipelineConfig, out_dir: Path, *, new_run: bool = False, teacher: Teacher | None = None) -> dict:
    """Generate traces for every prompt, resuming a stopped run. Pass `teacher` to reuse a started engine."""
    if teacher is None:
        join_cluster(cfg.executor)  # an unreachable cluster fails here, before anything is written
    # Prompts matching a benchmark (the eval block's and any listed) are dropped before generation.
    prompts, decontam = decontaminate_prompts(load_prompts(cfg.prompts), pipeline_decontam(cfg))
    size = cfg.generate.shard_size
    units = [prompts[i:i + size] for i in range(0, len(prompts), size)]
    plan = {"prompts": len(prompts), "shard_size": size,
            "prompts_fingerprint": fingerprint([(p["prompt_id"], p["problem"], p["answer"]) for p in prompts])}
    config = generate_fingerprint(cfg)
    stage = StageDir(Path(out_dir) / STAGE, STAGE, load_schema("trace"))
    fresh = not stage.manifest_path.exists() or new_run
    run_existed = Path(out_dir).exists()
    stage.prepare(fingerprint({"config": config, "plan": plan}), config, plan, new_run)
    if decontam is not None:
        write_json_atomic(stage.path / "decontam.json", decontam)
    done = stage.ledger()
    pending = [u for u in range(len(units)) if u not in done]
    if pending:
        own = teacher is None
        try:
            teacher = teacher or make_teacher(cfg.teacher, cfg.sampling, cfg.executor)
        except Exception:
            if fresh and not done:  # nothing was generated: leave nothing behind (nor an emptied run folder)
                shutil.rmtree(stage.path, ignore_errors=True)
                if not run_existed:
                    with contextlib.suppress(OSError):
                        stage.path.parent.rmdir()
            stage.release()
            raise
        try:
            _generate_units(stage, units, pending, done, cfg, teacher)
        finally:
            if own:
                teacher.close()
    removed = decontam_counts(decontam)
    counts = stage.finalize(records_in=len(prompts) + sum(removed.values()),
                            extra={**_extra(stage), **_teacher_stats(teacher),
                                   "decontam": decontam_summary(decontam)},
                            dropped=removed)
    console.print(f"[bold]generate[/]: {counts['extra']['prompts_done']} prompts → {counts['records_out']} traces "
                  f"({counts['extra']['errors']} errors, {counts['extra']['truncated']} truncated) in {stage.path}")
    return counts


def _generate_units(stage: StageDir, units: list[list[dict]], pending: list[int], done: dict, cfg: PipelineConfig,
                    teacher: Teacher) -> None:
    """Prompts go to the teacher in unit order, at most `open_units` shards uncommitted at a time; each shard
    commits as soon as all its prompts' k samples are back, so commits follow the shard size, not the engine's
    in-flight window (a kill loses at most the open shards)."""
    tokenizer = teacher.tokenizer()
    unit_of = {p["prompt_id"]: u for u in pending for p in units[u]}
    texts: dict[str, str] = {}
    buffers: dict[int, dict[str, GenResult]] = {}
    window = getattr(teacher, "window", None)  # teachers that take None ("nothing now") from the request stream
    open_units = (-(-window(cfg.sampling) // cfg.generate.shard_size) + 1) if window else len(pending)

    def requests():
        for u in pending:
            while window and len(buffers) >= open_units:
                yield None  # the window is full: the teacher steps what it has and asks again after a result
            buffers[u] = {}
            for p in units[u]:
                req, text = build_request(p, cfg.template, tokenizer, uses_chat_api(cfg))
                texts[p["prompt_id"]] = text
                yield req

    with stage_progress(STAGE, total_units=len(units), done_units=len(done), items_total=len(unit_of)) as progress:
        for result in teacher.generate(requests(), cfg.sampling):
            progress.note(tokens=sum(s.completion_tokens or 0 for s in result.samples))
            u = unit_of[result.key]
            buffers.setdefault(u, {})[result.key] = result
            if len(buffers[u]) < len(units[u]):
                continue
            rows = [r for p in units[u] for r in trace_rows(p, texts.pop(p["prompt_id"]), buffers[u][p["prompt_id"]],
                                                           cfg.template, cfg.sampling, teacher.model_id)]
            tokens = sum(r["completion_tokens"] for r in rows)
            stage.commit_result(u, ShardResult(rows=rows, stats={"completion_tokens": tokens}))
            del buffers[u]
            progress.advance(rows=len(rows), tokens=tokens)
    if buffers:  # the teacher stopped early without an error: never report an unfinished stage as done
        missing = sum(len(units[u]) - len(b) for u, b in buffers.items())
        raise TeacherError(f"the teacher returned no result for {missing} prompts of {len(buffers)} shards")


def _teacher_stats(teacher) -> dict:
    """What the teacher reports (Ray replicas: lost replicas and re-routed prompts; the vLLM engine: restarts)."""
    stats = getattr(teacher, "stats", None)
    return {"teacher": dict(stats)} if stats else {}


def _extra(stage: StageDir) -> dict:
    import pyarrow.compute as pc

    from factory.core.shards import list_parts, read_part

    totals = {"prompts_done": 0, "completion_tokens": 0, "errors": 0, "truncated": 0, "unfinished_think": 0}
    prompt_ids = set()
    for part in list_parts(stage.path):
        t = read_part(part, "trace", ["prompt_id", "completion_tokens", "finish_reason", "think_closed"])
        prompt_ids.update(t.column("prompt_id").to_pylist())
        totals["completion_tokens"] += int(pc.sum(t.column("completion_tokens")).as_py() or 0)
        totals["errors"] += int(pc.sum(pc.equal(t.column("finish_reason"), "error")).as_py() or 0)
        totals["truncated"] += int(pc.sum(pc.equal(t.column("finish_reason"), "length")).as_py() or 0)
        totals["unfinished_think"] += int(pc.sum(pc.invert(t.column("think_closed"))).as_py() or 0)
    totals["prompts_done"] = len(prompt_ids)
    return totals
