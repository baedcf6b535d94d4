"""The `factory` command: a thin typer layer over the Python API."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from factory.config import ConfigError, load_pipeline
from factory.registry import STAGE_NAMES, STAGES, stage

# rich_markup_mode=None: click's own help layout. typer's rich panel prints every option's type, so flags such as
# --new-run showed as `--new-run <bool>` as if they took a value; click's layout omits the type of a flag.
HELP_SETTINGS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings=HELP_SETTINGS,
                  help="R1 distillation data factory: generate → verify → curate → sft → eval → publish.")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"factory {version('factory')}")
        raise typer.Exit()


_STATE = {"debug": False}


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="print the version and exit")] = False,
          debug: Annotated[bool, typer.Option("--debug", help="print the full traceback of a failure")] = False,
          verbose: Annotated[bool, typer.Option(
              "--verbose", help="vLLM, transformers and torch log at info level (or FACTORY_VERBOSE=1)")] = False,
          ) -> None:
    """R1 distillation data factory: generate → verify → curate → sft → eval → publish."""
    from factory.core.logs import configure_third_party_logs

    _STATE["debug"] = debug or os.environ.get("FACTORY_DEBUG", "") not in ("", "0")
    configure_third_party_logs(verbose)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="pipeline YAML (see pipelines/)")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="run folder (default: outputs/<name>)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a YAML key: --set sampling.n=8")]
_STAGES_HELP = f"comma-separated subset of the pipeline's stages ({', '.join(STAGE_NAMES)})"
ExecutorOpt = Annotated[Optional[str], typer.Option(
    "--executor", help="where the work runs: local or ray (the same as --set executor.kind=...)")]
NewRunOpt = Annotated[bool, typer.Option("--new-run", help="discard this stage's earlier output and start afresh")]


def _load(config: Path, overrides: list[str] | None, executor: str | None = None):
    overrides = [*(overrides or []), *([f"executor.kind={executor}"] if executor else [])]
    try:
        return load_pipeline(config, overrides)
    except ConfigError as exc:
        typer.secho(f"config error:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def _out(cfg, out: Path | None) -> Path:
    return out if out is not None else Path("outputs") / cfg.name


def _guard(fn, *args, ctx=None, **kwargs):
    """Run a stage; a failure prints one message that says what happened and what to do and exits 1 (130 on ^C),
    instead of a traceback (`factory --debug` shows the traceback)."""
    from factory.core.errors import Context, explain, fallback
    from factory.core.ray_cluster import ExecutorError
    from factory.core.schema import SchemaError
    from factory.core.shards import StageConfigChanged
    from factory.generate.sources import SourceError
    from factory.generate.teachers import TeacherError

    try:
        return fn(*args, **kwargs)
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        if _STATE["debug"]:
            raise
        typer.secho("interrupted; rerunning the same command resumes from the last committed shard", fg="red", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:
        if _STATE["debug"]:
            raise
        message = explain(exc, ctx or Context())
        if message is None:  # factory's own errors carry a message written for the user
            known = (SourceError, TeacherError, ExecutorError, StageConfigChanged, SchemaError, FileNotFoundError,
                     ValueError)
            ours = type(exc).__module__.startswith("factory.")
            message = str(exc) if isinstance(exc, known) or ours else fallback(exc)
        typer.secho(f"error: {message}", fg="red", err=True)
        raise typer.Exit(1) from None


def _ctx(command: str, config: Path | None, run_dir: Path | None):
    from factory.core.errors import Context

    return Context(command=command, config=config, run_dir=run_dir)


@app.command()
def run(pipeline: Annotated[Path, typer.Argument(help="pipeline YAML, e.g. pipelines/demo.yaml")],
        out: OutOpt = None, set_: SetOpt = None, new_run: NewRunOpt = False, executor: ExecutorOpt = None,
        stages: Annotated[Optional[str], typer.Option(help=_STAGES_HELP)] = None):
    """Run the pipeline's stages in order, resuming a stopped run."""
    from factory.phases import has_phases, run_phases
    from factory.pipeline import run_pipeline

    if has_phases(pipeline):  # a `phases:` file: a chain of pipelines, each in DIR/<phase>/ (factory/phases.py)
        return _run_phases(pipeline, out, set_, executor, new_run, stages, run_phases)
    cfg = _load(pipeline, set_, executor)
    _guard(run_pipeline, cfg, _out(cfg, out), new_run=new_run, only=stages.split(",") if stages else None,
           ctx=_ctx("run", pipeline, _out(cfg, out)))


def _run_phases(pipeline: Path, out: Path | None, set_, executor, new_run: bool, stages, run_phases) -> None:
    from factory.core.config import read_yaml_mapping

    if stages:
        typer.secho("config error:\n--stages: not supported for a file with phases: (each phase lists its stages)",
                    fg="red", err=True)
        raise typer.Exit(2)
    overrides = [*(set_ or []), *([f"executor.kind={executor}"] if executor else [])]
    out = out if out is not None else Path("outputs") / str(read_yaml_mapping(pipeline).get("name", "run"))
    try:
        from factory.phases import build_phases

        build_phases(pipeline, out, overrides)  # every phase validated before any runs
    except ConfigError as exc:
        typer.secho(f"config error:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    _guard(run_phases, pipeline, out, overrides, new_run=new_run, ctx=_ctx("run", pipeline, out))


@app.command()
def preview(pipeline: Annotated[Path, typer.Argument(help="pipeline YAML, e.g. pipelines/demo.yaml")],
            n: Annotated[int, typer.Option("-n", "--num", min=0, help="prompts to show")] = 3,
            set_: SetOpt = None,
            as_json: Annotated[bool, typer.Option("--json", help="print the preview as JSON")] = False):
    """The first N prompts exactly as the teacher receives them, their token counts and the planned work
    (prompts × k, an upper bound on generated tokens, shards); starts no engine."""
    import json

    from factory.generate.preview import build_preview, format_preview

    cfg = _load(pipeline, set_)
    result = _guard(build_preview, cfg, n)
    typer.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False) if as_json else format_preview(result))


def _stage_command(name: str, summary: str):
    """A `factory NAME --config … --out … --set … --new-run` command running stage NAME of the registry."""

    def command(config: ConfigOpt, out: OutOpt = None, set_: SetOpt = None, new_run: NewRunOpt = False,
                executor: ExecutorOpt = None):
        cfg = _load(config, set_, executor)
        _guard(stage(name), cfg, _out(cfg, out), new_run=new_run, ctx=_ctx(name, config, _out(cfg, out)))

    command.__doc__ = summary
    if name == "sft":
        command.__doc__ += ("\n\nMulti-GPU: accelerate launch --config_file pipelines/accelerate/fsdp2_2gpu.yaml "
                            "-m factory.train.stage ...")
    return command


# The stages that take a pipeline and a run folder; publish and report have commands of their own below.
for _spec in STAGES.values():
    if _spec.name not in ("publish", "report"):
        app.command(name=_spec.name)(_stage_command(_spec.name, _spec.summary))


@app.command(help=STAGES["publish"].summary)
def publish(config: ConfigOpt, out: OutOpt = None, set_: SetOpt = None,
            repo_id: Annotated[Optional[str], typer.Option("--repo-id", help="ORG/NAME on the Hub")] = None,
            private: Annotated[Optional[bool], typer.Option("--private/--public", help="repo visibility")] = None,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="build the folders, print the plan, upload nothing")] = False):
    from factory.publish.stage import run_publish

    cfg = _load(config, set_)
    _guard(run_publish, cfg.publish, _out(cfg, out), repo_id=repo_id, private=private, dry_run=dry_run,
           ctx=_ctx("publish", config, _out(cfg, out)))


@app.command(help=STAGES["report"].summary)
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. outputs/demo")]):
    from factory.report.html import write_report

    path = _guard(write_report, run_dir, ctx=_ctx("report", None, run_dir))
    typer.echo(f"report: {path}")


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. outputs/demo")],
         stage: Annotated[Optional[str], typer.Option(
             "--stage", help="generate, verify or curate: examples per reason")] = None,
         filter_: Annotated[Optional[str], typer.Option(
             "--filter", help="only this filter's reasons (curate's filters, 'rejection sampling', 'kept')")] = None,
         wrong: Annotated[bool, typer.Option(
             "--wrong", help="eval's wrong answers beside the reference, pass rate per prompt")] = False,
         n: Annotated[int, typer.Option("--n", min=1, help="examples per reason")] = 3):
    """Look at a run's data in the terminal: the funnel, samples by stage/filter/reason, eval's wrong answers."""
    from factory.report.show import show as show_run

    _guard(show_run, run_dir, stage=stage, filter_=filter_, wrong=wrong, n=n, ctx=_ctx("show", None, run_dir))


_ExportFormat = Annotated[str, typer.Option(
    "--format", "-f", help="messages | sharegpt | llamafactory (ShareGPT + dataset_info.json)")]


@app.command("export")
def export_cmd(folder: Annotated[Path, typer.Argument(help="a curate or mix folder, or a run folder (its curate/)")],
               output: Annotated[Path, typer.Option("--output", "-o", help="the JSONL file to write")],
               format_: _ExportFormat = "sharegpt",
               name: Annotated[str, typer.Option("--name", help="llamafactory: the dataset's name")] = "factory_r1"):
    """Export curated or mixed samples as JSONL: messages, ShareGPT, or ShareGPT with LLaMA-Factory's
    dataset_info.json."""
    from factory.curate.export import export

    n = _guard(export, folder, format_, output, name)
    typer.echo(f"export: {n} samples → {output}")


# typer names the option after the parameter; `--set` is the public spelling.
for command in app.registered_commands:
    command.context_settings = {"help_option_names": ["-h", "--help"]}


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
