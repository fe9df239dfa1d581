"""Asks vLLM's own `vllm serve` argument parser which spellings of the flags llm-agent manages it
accepts. Run with the Python of an environment that has vLLM:

    python flag_probe.py DEST [DEST ...]

It builds the parser as `vllm` does (FlexibleArgumentParser, the serve subcommand), tries many
spellings of every option whose dest is listed (exact, = form, _ for -, dotted, every prefix,
attached values), and prints one JSON object: "candidates", each with the arguments tried and the
managed dests they changed (an argument vLLM refuses changes nothing), and "others", the option
strings of every option that is not managed.
"""
import contextlib
import io
import json
import sys

from vllm.entrypoints.cli import serve
from vllm.utils.argparse_utils import FlexibleArgumentParser

managed = set(sys.argv[1:])
parser = FlexibleArgumentParser(description="vLLM CLI")
subparsers = parser.add_subparsers(required=False, dest="subparser")
serve_parser = None
for cmd in serve.cmd_init():
    serve_parser = cmd.subparser_init(subparsers)


def parse(extra):
    """Returns the namespace vLLM makes of `serve /m EXTRA`, or None if it refuses them."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return vars(parser.parse_args(["serve", "/m", *extra]))
        except (SystemExit, Exception):
            return None


base = parse([])
assert base is not None, "vllm serve /m does not parse"


def value_for(action):
    if action.nargs == 0:
        return None
    if action.choices:
        return str(list(action.choices)[0])
    return "7"


def spellings(opt):
    out = {opt}
    if opt.startswith("--"):
        out.add(opt.replace("-", "_").replace("__", "--", 1))
        out.update(opt[:i] for i in range(3, len(opt)))  # abbreviations
        out.add("-" + opt[2:])  # a long option with one dash
    else:
        out.update(opt[:i] for i in range(2, len(opt)))
    return out


candidates = []
others = []
for action in serve_parser._actions:
    if action.dest not in managed:
        others.extend(action.option_strings)
        continue
    value = value_for(action)
    for opt in action.option_strings:
        for s in sorted(spellings(opt)):
            tries = [[s]]
            if value is not None:
                tries += [[s, value], [s + "=" + value], [s + value], [s + ".x", value]]
            for extra in tries:
                ns = parse(extra)
                changed = []
                if ns is not None:
                    changed = sorted(d for d in managed if d in ns and ns[d] != base.get(d))
                candidates.append({"args": extra, "changed": changed})
json.dump({"candidates": candidates, "others": sorted(set(others))}, sys.stdout)
