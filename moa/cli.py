"""The command line: `python -m moa run|chat|history|show|export|import|eval|models` (0/1/2)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from moa import config as config_mod
from moa import conversation
from moa.config import ConfigError, ModelSpec, RunConfig

DEFAULT_PRESET = "local-quick"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


class BadInput(Exception):
    """Raised for anything the user can fix; printed as one line, exit code 2."""


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- argument parsing


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line + usage hint, exit 2, no traceback
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n(see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m moa", description="Mixture-of-Agents runs, logged to SQLite.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a prompt through a mixture of models")
    run.add_argument("prompt", help="the prompt; '-' reads it from standard input")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="FILE", help="a run config TOML file")
    src.add_argument("--preset", metavar="NAME", help="a preset from data/presets/")
    run.add_argument(
        "--proposer",
        metavar="MODEL",
        action="append",
        default=[],
        help="proposer model id (repeatable; MODEL@http://host/v1 sets api_base)",
    )
    run.add_argument("--aggregator", metavar="MODEL", help="aggregator model id")
    run.add_argument("--layers", type=int, metavar="N", help="proposer layers (1-4)")
    run.add_argument("--system", metavar="TEXT", help="a system prompt for every model")
    _strategy_flags(run)
    run.add_argument(
        "--continue",
        dest="continue_id",
        metavar="ID",
        help="add this run as the next turn of a conversation (a conversation id, or a run id "
        "meaning its conversation)",
    )
    _common(run)

    chat = sub.add_parser(
        "chat",
        help="a conversation of MoA turns: type messages (or pipe one per line)",
        description="Interactive: /new starts a new conversation, /retry runs the last turn "
        "again, /exit leaves; Ctrl+C cancels the running turn, a second Ctrl+C exits. With "
        "standard input not a terminal, each line is one turn.",
    )
    chat_src = chat.add_mutually_exclusive_group()
    chat_src.add_argument("--config", metavar="FILE", help="a run config TOML file")
    chat_src.add_argument("--preset", metavar="NAME", help="a preset from data/presets/")
    chat.add_argument(
        "--continue",
        dest="continue_id",
        metavar="ID",
        help="continue a stored conversation (its id, or the id of one of its runs)",
    )
    _strategy_flags(chat)
    _common(chat)

    hist = sub.add_parser("history", help="list past conversations, latest activity first")
    hist.add_argument("--search", metavar="TEXT", default="", help="words in prompts or answers")
    hist.add_argument("--limit", type=int, default=20, metavar="N")
    _common(hist)

    show = sub.add_parser("show", help="show one past run, or a whole conversation")
    show.add_argument("run_id", metavar="ID", help="a run id or a conversation id")
    _common(show)

    exp = sub.add_parser(
        "export", help="export a run or a whole conversation as Markdown, JSON or an HTML report"
    )
    exp.add_argument("run_id", metavar="ID", help="a run id or a conversation id")
    exp.add_argument("--format", choices=("md", "json", "html"), default="md")
    exp.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    exp.add_argument("--db", metavar="PATH", help="SQLite file (default: $MOA_DB or data/moa.db)")

    imp = sub.add_parser("import", help="import a run or a conversation from a JSON export")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--db", metavar="PATH", help="SQLite file (default: $MOA_DB or data/moa.db)")

    _eval_parser(sub)

    models = sub.add_parser("models", help="local models and which provider keys are set")
    models.add_argument("--json", action="store_true", help="print JSON")
    return p


def _strategy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strategy",
        choices=config_mod.STRATEGIES,
        help="how the candidates become the answer (default: the config's, else synthesize)",
    )
    p.add_argument(
        "--cascade",
        action="store_true",
        default=None,
        help="two samples first; run the panel only if they disagree",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="PATH", help="SQLite file (default: $MOA_DB or data/moa.db)")
    p.add_argument("--json", action="store_true", help="print JSON to stdout")


# ---------------------------------------------------------------- commands


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """--config / --preset / --proposer flags / the default preset, then the overrides."""
    if args.config:
        cfg = config_mod.load(args.config)
    elif args.preset:
        cfg = config_mod.load_preset(args.preset)
    elif args.proposer:
        first = config_mod._spec_from_cli(args.proposer[0])
        cfg = RunConfig(proposers=[first], aggregator=ModelSpec(model=first.model), name="CLI")
    else:
        cfg = config_mod.load_preset(os.environ.get("MOA_PRESET") or DEFAULT_PRESET)
    if args.layers is not None and not isinstance(args.layers, int):
        raise ConfigError("--layers must be an integer")
    return cfg.with_overrides(
        args.proposer or None,
        args.aggregator,
        args.layers,
        getattr(args, "strategy", None),
        getattr(args, "cascade", None),
    )


def cmd_run(args: argparse.Namespace) -> int:
    from moa import engine, export, strategies
    from moa.store import Store

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    cfg = resolve_config(args)
    store = Store(args.db)  # opened before any call: a bad database is bad input, not a failed run
    store.check_writable()  # a read-only log refuses the run instead of half-saving it
    plan = conversation.plan_turn(_conversation(store, args.continue_id), prompt)

    cancel = engine.Cancel()
    signal.signal(signal.SIGINT, _interrupt_handler(cancel))
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    # On a terminal the final answer streams as it is written; piped, stdout gets only the
    # finished answer (a failed aggregator's partial text must not precede its fallback's).
    live = not args.json and sys.stdout.isatty() and strategies.streams_final(cfg)
    record = _run_turn(store, cfg, prompt, plan, cancel, live, system=args.system)
    if args.json:
        from moa import analysis

        # The store writer cached the run's analysis as it finished: read, not recomputed.
        found = analysis.for_run(record, store)
        print(json.dumps(export.run_to_json(record, found), ensure_ascii=False, indent=2))
    elif not live and record.final_text:
        print(record.final_text)
    return {"ok": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(record.status, EXIT_FAILED)


def _conversation(store: Any, some_id: str | None) -> Any:
    """The stored conversation `--continue ID` names (None without the flag); BadInput if none."""
    if some_id is None:
        return None
    cid = store.resolve_conversation(some_id)
    conv = store.get_conversation(cid) if cid else None
    if conv is None:
        raise BadInput(
            f"no conversation or run with id {some_id!r:.80}; `python -m moa history` lists them"
        )
    return conv


def _run_turn(
    store: Any,
    cfg: RunConfig,
    prompt: str,
    plan: Any,
    cancel: Any,
    live: bool,
    system: str | None = None,
) -> Any:
    """Check, then run one turn of `plan`'s conversation, logged; progress on stderr."""
    from moa import engine, strategies
    from moa.events import fan_out
    from moa.store import StoreWriter

    try:
        estimate = engine.check(cfg, prompt, system, history=plan.history)
    except engine.InputError as e:
        raise BadInput(str(e)) from None
    sent = f" · turn {plan.turn}, {len(plan.history)} earlier turn(s) sent" if plan.turn > 1 else ""
    _err(
        f"run: {cfg.name} · {len(cfg.proposers)} proposers × {cfg.layers} layer(s) → "
        f"{cfg.aggregator.display} · strategy {cfg.strategy_label} · "
        f"estimated ≤ {estimate.describe()}{sent}"
    )
    if plan.new and plan.parent_id:
        store.create_conversation(
            plan.conversation_id, plan.title, plan.parent_id, plan.branch_turn
        )
    record = engine.run_sync(
        cfg,
        prompt,
        system_prompt=system,
        cancel=cancel,
        checked=True,
        on_event=fan_out(StoreWriter(store), _ProgressPrinter(stream_final=live)),
        history=plan.history,
        conversation_id=plan.conversation_id,
        turn=plan.turn,
    )
    usage = record.usage()
    cost = "unknown" if usage["cost_usd"] is None else f"${usage['cost_usd']:.6f}"
    labels = {i: c.label for i, c in enumerate(record.proposer_calls)}
    for line in strategies.summary_lines(record.outcome, labels):
        _err(line)
    _err(
        f"{record.status}: {record.wall_s:.2f} s, {usage['tokens_in']}+{usage['tokens_out']} "
        f"tokens, cost {cost}, run id {record.run_id}"
        + (" (aggregated early)" if record.aggregated_early else "")
        + (f"\n{record.error}" if record.error else "")
    )
    for c in record.calls:
        if c.history_note:
            _err(f"  note: {c.history_note}")
    return record


def cmd_chat(args: argparse.Namespace) -> int:
    """A conversation: one MoA turn per message, each with the earlier turns as history."""
    from moa import engine, export, strategies
    from moa.store import Store

    args.proposer, args.aggregator, args.layers = [], None, None
    cfg = resolve_config(args)
    store = Store(args.db)
    store.check_writable()
    conv = _conversation(store, args.continue_id)
    interactive = sys.stdin.isatty()
    live = interactive and not args.json and sys.stdout.isatty() and strategies.streams_final(cfg)
    state: dict[str, Any] = {"cancel": None}

    def on_sigint(*_: object) -> None:
        cancel = state["cancel"]
        if cancel is not None and not cancel.requested:
            _err("\n(cancelling this turn; Ctrl+C again exits)")
            cancel.cancel()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, lambda *_: (state["cancel"] or engine.Cancel()).cancel())
    if interactive:
        where = (
            f"conversation {conv.id} ({len(conv.turns)} turns)" if conv else "a new conversation"
        )
        _err(f"chat: {cfg.name} · {where} · /new, /retry, /exit; Ctrl+C cancels a turn")
    worst = EXIT_OK
    try:
        while True:
            try:
                line = input("you> " if interactive else "")
            except EOFError:
                break
            message = line.strip()
            if not message:
                continue
            if message in ("/exit", "/quit"):
                break
            if message == "/new":
                conv = None
                _err("(new conversation)")
                continue
            if message == "/retry":
                if conv is None or not conv.runs:
                    _err("nothing to retry yet: type a message")
                    continue
                try:
                    plan, last = conversation.plan_retry(conv)
                except ValueError as e:
                    _err(str(e))
                    continue
                message = last.prompt
            elif message.startswith("/"):
                _err(f"unknown command {message.split()[0]!r}: use /new, /retry or /exit")
                continue
            else:
                plan = conversation.plan_turn(conv, message)
            state["cancel"] = engine.Cancel()
            try:
                record = _run_turn(store, cfg, message, plan, state["cancel"], live)
            except BadInput as e:
                if not interactive:
                    raise
                _err(f"error: {e}")
                continue
            finally:
                state["cancel"] = None
            if args.json:
                print(json.dumps(export.run_to_json(record), ensure_ascii=False), flush=True)
            elif not live and record.final_text:
                print(record.final_text, flush=True)
            if record.status != "ok":
                worst = EXIT_FAILED if worst == EXIT_OK else worst
            conv = store.get_conversation(plan.conversation_id)
    except KeyboardInterrupt:
        _err("\n(exit)")
        return EXIT_CANCELLED
    return worst


class _Answered(Exception):
    """A second Ctrl+C while the aggregate-now question waits for its answer."""


def _interrupt_handler(cancel: Any, stdin: Any = None, stderr: Any = None):
    """Ctrl+C during a run. The first one while proposers are still answering asks, on a
    terminal, whether to aggregate what has arrived (Enter or y: yes; n: stop the run); any
    other Ctrl+C (a second one, later stages, no terminal) stops the run."""
    asked = {"done": False, "asking": False}

    def handle(*_: Any) -> None:
        tty_in = stdin or sys.stdin
        tty_err = stderr or sys.stderr
        if asked["asking"]:
            cancel.cancel()
            raise _Answered
        interactive = tty_in.isatty() and tty_err.isatty()
        if asked["done"] or cancel.stage != "proposers" or not interactive:
            cancel.cancel()
            return
        asked["done"] = asked["asking"] = True
        try:
            tty_err.write("\naggregate what has arrived? [Y/n] ")
            tty_err.flush()
            answer = tty_in.readline()
        except (_Answered, OSError):
            return
        finally:
            asked["asking"] = False
        if answer.strip().lower() in ("", "y", "yes"):
            _err("aggregating the answers that have arrived (Ctrl+C again stops the run)")
            cancel.aggregate_now()
        else:
            cancel.cancel()

    return handle


def cmd_history(args: argparse.Namespace) -> int:
    from moa.store import Store

    if args.limit < 1:
        raise BadInput("--limit must be 1 or more")
    rows = Store(args.db).search_conversations(args.search, limit=args.limit)
    if args.json:
        out = [{"conversation_id": r.id, **r.__dict__} for r in rows]
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return EXIT_OK
    if not rows:
        _err("no conversations found" + (f" for {args.search!r}" if args.search else ""))
    for r in rows:
        title = r.title if len(r.title) <= 58 else r.title[:57] + "…"
        turns = f"{r.n_turns} turn" + ("s" if r.n_turns != 1 else "")
        when = r.updated_at[:19].replace("T", " ")
        print(f"{r.id}  {when}  {r.last_status or '-':<11} {turns:>8}  {title}")
    return EXIT_OK


def _stored(store: Any, some_id: str) -> Any:
    """The conversation (by its id) or the run (by its id) that `some_id` names; BadInput if none."""
    conv = store.get_conversation(some_id) if some_id.startswith("c") else None
    if conv is not None:
        return conv
    record = store.get_run(some_id)
    if record is None:
        raise BadInput(
            f"no conversation or run with id {some_id!r:.80}; `python -m moa history` lists them"
        )
    return record


def cmd_show(args: argparse.Namespace) -> int:
    from moa import export
    from moa.conversation import Conversation
    from moa.store import Store

    store = Store(args.db)
    found = _stored(store, args.run_id)
    if isinstance(found, Conversation):
        if args.json:
            obj = export.conversation_to_json(found, store)  # analyses from the store's cache
            print(json.dumps(obj, ensure_ascii=False, indent=2))
            return EXIT_OK
        print(f"conversation {found.id} · {found.title}")
        if found.parent_id:
            print(f"branched from {found.parent_id} at turn {found.branch_turn}")
        for run in found.runs:
            print(f"\n── turn {run.turn} · run {run.run_id} · {run.status}")
            print(f"you: {run.prompt}\n")
            print(run.final_text or f"({run.error or 'no final answer'})")
        return EXIT_OK
    record = found
    if args.json:
        from moa import analysis

        cached = analysis.for_run(record, store)  # the store's copy: the same highlights
        print(json.dumps(export.run_to_json(record, cached), ensure_ascii=False, indent=2))
        return EXIT_OK
    print(
        f"run {record.run_id} · {record.created_at} · {record.status}"
        + (f" · {record.error}" if record.error else "")
    )
    print(f"conversation {record.conversation_id} · turn {record.turn}")
    print(f"prompt: {record.prompt}\n")
    for c in record.calls:
        head = f"[layer {c.layer} {c.role} {c.index + 1}] {c.label} ({c.model}) · {c.status}"
        if c.latency_s is not None:
            head += f" · {c.latency_s:.2f}s"
        print(head)
        if c.history_note:
            print(f"({c.history_note})")
        print(c.text.strip() or f"({c.error or 'no text'})")
        print()
    from moa.strategies import summary_lines

    labels = {i: c.label for i, c in enumerate(record.proposer_calls)}
    for line in summary_lines(record.outcome, labels):
        print(line)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from moa import export, report
    from moa.conversation import Conversation
    from moa.store import Store

    store = Store(args.db)
    found = _stored(store, args.run_id)
    # Every format reads the runs' highlights from the store's cache (not recomputed).
    if isinstance(found, Conversation):
        to_json, to_html, to_md = (
            export.conversation_to_json,
            report.conversation_to_html,
            export.conversation_to_markdown,
        )
    else:
        to_json, to_html, to_md = export.run_to_json, report.run_to_html, export.run_to_markdown
    if args.format == "json":
        text = json.dumps(to_json(found, store=store), ensure_ascii=False, indent=2) + "\n"
    elif args.format == "html":
        text = to_html(found, store=store)
    else:
        text = to_md(found, store=store)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise BadInput(f"cannot write {args.output}: {e.strerror}") from None
        _err(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from moa import export
    from moa.conversation import Conversation
    from moa.store import ConversationError, Store

    try:
        with open(args.file, "rb") as f:
            data = f.read(export.MAX_IMPORT_BYTES + 1)
    except OSError as e:
        raise BadInput(f"cannot read {args.file}: {e.strerror}") from None
    try:
        found = export.load_export(data)
    except export.ImportError_ as e:
        raise BadInput(f"{args.file}: {e}") from None
    store = Store(args.db)
    store.check_writable()
    if isinstance(found, Conversation):
        try:
            store.import_conversation(found)
        except ConversationError as e:
            raise BadInput(f"{e}; nothing imported") from None
        print(found.id)
        return EXIT_OK
    record = found
    if store.get_run(record.run_id) is not None:
        raise BadInput(f"run {record.run_id} is already in {store.path}; nothing imported")
    store.save_run(record)
    print(record.run_id)
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from moa import local
    from moa.llm import keys_set

    models = [m.__dict__ for m in local.model_status()]
    keys = keys_set()
    if args.json:
        print(json.dumps({"local": models, "keys": keys}, indent=2))
        return EXIT_OK
    print("Local models (run on this CPU, no key needed):")
    for m in models:
        state = "verified" if m["verified"] else ("installed" if m["installed"] else "missing")
        if m["installed"] and m["verified"] is None:
            state = "installed (verified on first load)"
        size = f"{m['size_bytes'] / 1e6:,.0f} MB"
        about = f"{m['family']}, {m['licence']}"
        if not m["instruction_tuned"]:
            about += ", pretrained (not instruction-tuned)"
        print(f"  {m['id']:<28} {state:<36} {size:>8}  {about}")
        if m["error"]:
            print(f"      {m['error']}")
    print("Provider keys (names only):")
    for name, is_set in keys.items():
        print(f"  {name:<24} {'set' if is_set else '-'}")
    return EXIT_OK


class _ProgressPrinter:
    """Progress lines on stderr; the aggregator's text streamed to stdout unless --json."""

    def __init__(self, stream_final: bool) -> None:
        self.stream_final = stream_final

    def __call__(self, event: Any) -> None:
        from moa import events as ev

        match event:
            case ev.CallStarted(call=c):
                _err(f"  … {_name(c)} started")
            case ev.CallRetrying(call=c, error=error, delay_s=delay):
                _err(f"  ↻ {_name(c)} retrying in {delay:.1f}s: {error}")
            case ev.TokenDelta(call=c, text=text) if self.stream_final and c.role == "aggregator":
                sys.stdout.write(text)
                sys.stdout.flush()
            case ev.CallFinished(call=c):
                if self.stream_final and c.role == "aggregator":
                    sys.stdout.write("\n")
                cost = "?" if c.cost_usd is None else f"${c.cost_usd:.6f}"
                _err(
                    f"  ✓ {_name(c)} {c.latency_s:.2f}s (first token {c.ttft_s or 0:.2f}s), "
                    f"{c.tokens_out} tokens, {cost}"
                    + (" (stopped at max_tokens: probably cut off)" if c.cut_at_max_tokens else "")
                )
            case ev.CallFailed(call=c):
                if self.stream_final and c.role == "aggregator" and c.text:
                    sys.stdout.write("\n")
                    _err("  (the text above is the failed aggregator's partial answer)")
                _err(f"  ✗ {_name(c)} {c.status}: {c.error}")


def _name(c: Any) -> str:
    role = f"L{c.layer} #{c.index + 1}" if c.role == "proposer" else c.role
    return f"{role} {c.label}"


# ---------------------------------------------------------------- eval


def _eval_parser(sub: Any) -> None:
    ev = sub.add_parser("eval", help="score MoA configs and single models on a question set")
    ev.add_argument(
        "--questions",
        required=True,
        metavar="SET_OR_FILE",
        help="mtbench, verifiable, or a .jsonl/.csv file (prompt; optional answer, category)",
    )
    ev.add_argument(
        "--contender",
        action="append",
        required=True,
        metavar="PRESET_OR_MODEL",
        help="a preset or config .toml (its MoA), a model id alone (MODEL@http://host/v1 "
        "sets api_base), or self-moa:PRESET / self-moa:MODEL (repeatable)",
    )
    ev.add_argument(
        "--expand",
        action="store_true",
        help="add each preset contender's models alone and its Self-MoA",
    )
    ev.add_argument("--judge", metavar="MODEL", help="judge model for LLM-as-judge scoring")
    ev.add_argument(
        "--scoring",
        choices=("auto", "match", "judge", "pairwise"),
        default="auto",
        help="auto: match verifiable answers, else grade with the judge (default)",
    )
    ev.add_argument("--baseline", metavar="NAME", help="pairwise: compare with this contender")
    ev.add_argument(
        "--limit", type=int, metavar="N", help="N questions, spread over the categories"
    )
    ev.add_argument(
        "--turns",
        type=int,
        choices=(1, 2),
        default=2,
        help="2 (default): also ask each question's second turn where it has one (MT-Bench "
        "style, judged); 1: first turns only",
    )
    ev.add_argument("--concurrency", type=int, default=4, metavar="N", help="answers in flight")
    ev.add_argument("--max-cost", type=float, metavar="USD", help="refuse if the estimate is over")
    ev.add_argument(
        "--new",
        action="store_true",
        help="start afresh instead of resuming an interrupted evaluation of the same plan",
    )
    _common(ev)


def cmd_eval(args: argparse.Namespace) -> int:
    from moa import evaluate as ev
    from moa.questions import QuestionFileError, load_question_set
    from moa.store import Store

    try:
        questions = load_question_set(args.questions, args.limit)
        if args.turns == 1:
            questions = questions.first_turns()
        contenders = []
        for text in args.contender:
            c = ev.parse_contender(text)
            contenders += ev.from_preset(c.config) if args.expand and c.kind == "moa" else [c]
        plan = ev.EvalPlan(
            questions,
            ev.unique_names(contenders),
            scoring=args.scoring,
            judge=ev.judge_spec(args.judge) if args.judge else None,
            baseline=args.baseline,
            concurrency=args.concurrency,
            max_cost_usd=args.max_cost,
        )
        store = Store(args.db)
        store.check_writable()
        prepared = ev.prepare(store, plan, resume=not args.new)
    except (QuestionFileError, ev.EvalInputError) as e:
        raise BadInput(str(e)) from None
    plan = prepared.plan
    followups = plan.questions.n_followups
    _err(
        f"eval: {len(plan.questions.questions)} questions ({plan.questions.name})"
        + (f", {followups} with a second turn," if followups else "")
        + " × "
        f"{len(plan.contenders)} contenders ({', '.join(c.name for c in plan.contenders)}) · "
        f"scoring {plan.scoring}" + (f" by {plan.judge.model}" if plan.judge else "")
    )
    if prepared.eval_id:
        _err(
            f"resuming evaluation {prepared.eval_id}: {prepared.done} of {prepared.total} items "
            "already done (--new starts afresh)"
        )
    _err(
        f"  {prepared.estimate.n_runs} answers + {prepared.estimate.n_judge_calls} judge calls "
        f"left, estimated ≤ {prepared.estimate.describe()}"
    )

    cancel = ev.EvalCancel()
    signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    results = ev.run_evaluation_sync(
        store, prepared, on_progress=lambda p: _err("  " + p.describe()), cancel=cancel
    )
    _err(
        f"{results.status}: evaluation {results.eval_id}"
        + (f" · {results.error}" if results.error else "")
    )
    if args.json:
        print(json.dumps(results.to_json(), ensure_ascii=False, indent=2))
    else:
        _print_eval_table(results)
    return {"ok": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(results.status, EXIT_FAILED)


def _print_eval_table(results: Any) -> None:
    scale = 100 if results.scoring != "judge" else 1
    unit = {"match": "accuracy %", "judge": "rating 1-10", "pairwise": "win rate %"}[
        results.scoring
    ]
    if results.n_turns > 1:
        _print_turns_table(results, scale, unit)
        print("both turns together:")
    print(
        f"{'contender':<32} {unit:>12} {'95% CI':>15} {'cost $':>10} {'latency s':>10} "
        f"{'tokens':>7} {'ok':>4} {'failed':>6}"
    )
    for c in results.contenders:
        score = "-" if c.score is None else f"{c.score * scale:.1f}"
        ci = "-" if c.ci_low is None else f"{c.ci_low * scale:.1f}–{c.ci_high * scale:.1f}"
        cost = "unknown" if c.cost_usd is None else f"{c.cost_usd:.4f}"
        latency = "-" if c.latency_s is None else f"{c.latency_s:.2f}"
        print(
            f"{c.name[:32]:<32} {score:>12} {ci:>15} {cost:>10} {latency:>10} "
            f"{c.tokens_out:>7} {c.n_ok:>4} {c.n_failed:>6}"
        )
    for c in results.contenders:
        if c.escalation_rate is not None:
            print(f"{c.name}: the cascade ran the panel for {c.escalation_rate:.0%} of answers")
    for x in ("cost", "latency"):
        front = results.pareto_front(x)
        if front and len(results.contenders) > 1:
            print(f"Pareto front (quality vs {x}): {', '.join(c.name for c in front)}")
    if results.judge_model:
        cost = "unknown" if results.judge_cost_usd is None else f"${results.judge_cost_usd:.4f}"
        print(f"judge {results.judge_model}: {cost} (not included above)")
    head = results.headline()
    if head is not None:
        print(head.describe())


def _print_turns_table(results: Any, scale: int, unit: str) -> None:
    """Two-turn questions: each contender's score on turn 1 and on turn 2 (MT-Bench's columns)."""
    views = [results.for_turn(1), results.for_turn(2)]
    print(f"{'contender':<32} {'turn 1 ' + unit:>20} {'turn 2 ' + unit:>20}")
    for c in results.contenders:
        cells = []
        for view in views:
            r = next(x for x in view.contenders if x.name == c.name)
            cells.append("-" if r.score is None else f"{r.score * scale:.1f} (n={r.n_scored})")
        print(f"{c.name[:32]:<32} {cells[0]:>20} {cells[1]:>20}")
    print()


COMMANDS = {
    "run": cmd_run,
    "chat": cmd_chat,
    "history": cmd_history,
    "show": cmd_show,
    "export": cmd_export,
    "import": cmd_import,
    "models": cmd_models,
    "eval": cmd_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from moa.local import LocalModelError
    from moa.store import StoreError

    try:
        return COMMANDS[args.command](args)
    except (BadInput, ConfigError, StoreError, LocalModelError) as e:
        _err(f"error: {e}")
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK
