"""Hostile command-line arguments (issue 21): every subcommand over a grid of hostile values, in process.

The grid is derived from gvcc's own argparse parser. Every argument that takes a value declares its domain with
one of gvcc's argument types (Int, Float, Span, Size, Rate, Md5, Path, Text) or a list of choices, and the values
below are made from those objects: numbers past either end of their range, nan, inf, -0, text that is no number;
ranges past either end, reversed, empty, negative; sizes and rates of zero or out of range; and output names of
every kind that must be refused (a folder where a file is expected and the reverse, a missing or read-only
parent, an input under its own name or a link, an existing file without -y). Each case runs `gvcc.main(argv)`
on a command line that succeeds without the hostile value, and must end in exit status 1, exactly one
`gvcc: error:` line that names the argument or the value, no traceback, nothing on stdout, and no file created,
changed or left behind. So an argument added later is fuzzed without being listed here, and one added without a
declared domain fails test_every_argument_declares_its_domain.
"""
import argparse
import dataclasses
import os
import shutil
import zlib
from fractions import Fraction

import pytest

import bitstream
import gvcc
import media
import wan_model
from golden_cases import synthetic_clip

DOMAIN_TYPES = (gvcc.Int, gvcc.Float, gvcc.Span, gvcc.Size, gvcc.Rate, gvcc.Md5, gvcc.Path, gvcc.Text)
HUGE = "1" + "0" * 30


def subparsers():
    parser = gvcc.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def valued(sub):
    """The arguments of a subcommand that take a value (flags, --help and --version excluded)."""
    return [a for a in sub._actions if a.nargs != 0 and not isinstance(a, (argparse._HelpAction,
                                                                           argparse._VersionAction))]


def test_every_argument_declares_its_domain():
    for name, sub in subparsers().items():
        for action in valued(sub):
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.choices is not None or isinstance(action.type, DOMAIN_TYPES), \
                f"{what}: give it one of gvcc's argument types (or choices), so that its values are checked " \
                f"before any work and fuzzed here"


# --------------------------------------------------------------------------------------------------
# The files a command line works on
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tiny_weights, tmp_path_factory, one_thread):
    """A folder with a 9-frame clip, its t2v stream (2 GOPs of 5 frames, made by the encode baseline) and the
    stream cut into two parts, an output folder, and the existing names the hostile output paths point at."""
    root = str(tmp_path_factory.mktemp("arguments"))
    clip = os.path.join(root, "clip.y4m")
    media.write_video(clip, synthetic_clip(9, 16, 16), Fraction(16, 1))
    shutil.copy(clip, os.path.join(root, "other.y4m"))
    os.mkdir(os.path.join(root, "out"))
    files = {"root": root, "clip": clip, "other": os.path.join(root, "other.y4m"), "weights": tiny_weights,
             "stream": os.path.join(root, "stream.gvcc"), "part0": os.path.join(root, "part0.gvcc"),
             "part1": os.path.join(root, "part1.gvcc")}
    assert gvcc.main(argv(baseline(files, "encode"), "encode", output=files["stream"])) == 0
    hdr, gops = bitstream.read_stream(open(files["stream"], "rb").read())
    for i in range(2):
        with open(files[f"part{i}"], "wb") as fh:
            fh.write(bitstream.write_stream(dataclasses.replace(hdr, first_gop=i, gop_count=1), [gops[i]]))
    make_hostile_names(os.path.join(root, "hostile"), files)
    return files


def make_hostile_names(h, files):
    for folder in ("full", "full.y4m", "frames"):
        os.makedirs(os.path.join(h, folder), exist_ok=True)
        open(os.path.join(h, folder, "notes.txt" if folder == "frames" else "x"), "wb").write(b"kept")
    for folder in ("empty", "empty.y4m", os.path.join("weights_like", "tiny_t2v.safetensors")):
        os.makedirs(os.path.join(h, folder))
    for name in ("plain", "plain.y4m", "plain.gvcc", os.path.join("weights_like", "tiny_vae.safetensors")):
        open(os.path.join(h, name), "wb").write(b"precious")
    for key in ("clip", "other", "stream", "part0", "part1"):         # every input, under a second name
        os.link(files[key], os.path.join(h, f"hard_{key}.y4m"))
        os.symlink(files[key], os.path.join(h, f"soft_{key}.y4m"))


def read_only_folder(root):
    # root writes through permission bits: then a folder of a virtual file system that takes no new files
    if os.geteuid() != 0:
        folder = os.path.join(root, "hostile", "ro")
        os.makedirs(folder, exist_ok=True)
        os.chmod(folder, 0o555)
        return folder
    try:
        open("/sys/.gvcc-test", "wb").close()
    except OSError:
        return "/sys"
    os.remove("/sys/.gvcc-test")
    pytest.skip("running as root and no read-only folder to try")


def baseline(files, command):
    """A command line of each subcommand that succeeds: (positionals {dest: value or [values]}, options
    [(flag, value or None)]). Outputs go to the folder out/, which the grid's cases leave empty."""
    out = os.path.join(files["root"], "out")
    weights = ("--weights", files["weights"])
    lines = {
        "encode": ({"input": files["clip"], "output": os.path.join(out, "e.gvcc")},
                   [weights, ("--model", "tiny-t2v"), ("-K", "16"), ("-M", "2"), ("--steps", "2"),
                    ("--tail-steps", "1"), ("--gop", "5"), ("--quiet", None)]),
        "decode": ({"input": files["stream"], "output": os.path.join(out, "d.y4m")}, [weights, ("--quiet", None)]),
        "info": ({"input": files["stream"]}, []),
        "eval": ({"ref": files["clip"], "decoded": files["other"]}, [("--no-lpips", None)]),
        "concat": ({"parts": [files["part0"], files["part1"]], "output": os.path.join(out, "c.gvcc")}, []),
        "make-tiny": ({"dir": os.path.join(out, "tiny")}, []),
    }
    return lines[command]


def argv(line, command, **positionals):
    """The command line of a baseline `line` of `command`, with positionals replaced by keyword (a list for
    nargs='+')."""
    values, options = line
    out = [command]
    for action in subparsers()[command]._actions:
        if not action.option_strings and action.dest in values:
            value = positionals.get(action.dest, values[action.dest])
            out += value if isinstance(value, list) else [value]
    for flag, value in options:
        out += [flag] if value is None else [flag, value]
    return out


# --------------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------------

def hostile_values(action):
    """Values outside the declared domain of an option or positional that is not a path."""
    t = action.type
    if action.choices is not None:
        return ["bogus", ""]
    if isinstance(t, gvcc.Int):
        values = [str(t.lo - 1), "-1" if t.lo >= 0 else None, "-0" if t.lo > 0 else None, "nan", "inf", "1.5",
                  "1e3", "0x10", "", "one"]
        if t.hi is not None:
            values += [str(t.hi + 1), HUGE]
        return [v for v in values if v is not None]
    if isinstance(t, gvcc.Float):
        values = ["nan", "NaN", "inf", "-inf", "1e999", "", "x", "1/2"]
        if t.lo >= 0:
            values += ["-1", "-0" if t.above or t.lo > 0 else None, str(t.lo) if t.above else None]
            values += ["0" if t.lo > 0 else None, "1e-300" if t.lo > 0 else None]
        if t.hi is not None:
            values += [repr(t.hi * 10), "1e308"]
        return [v for v in values if v is not None]
    if isinstance(t, gvcc.Span):
        return ["", "x", "1", "1:2:3", "a:b", "-1:", ":-1", "-1:2", "3:1", "2:2", ":0", "0:0", "99999:",
                "0:99999", "99999:100000", "1.5:2"]
    if isinstance(t, gvcc.Size):
        values = ["", "16", "16x", "x16", "0x16", "16x0", "-16x16", "99999x99999", "nanxnan", "16.5x16", "1e3x16"]
        return values + ([f"16x{t.limit + 1}"] if t.limit is not None else [])
    if isinstance(t, gvcc.Rate):
        return ["", "0", "-0", "-25", "nan", "inf", "1/0", "0/1", "x", "1e9", "-1/2"]
    if isinstance(t, gvcc.Md5):
        return ["", "abc", "g" * 32, "0" * 31, "0" * 33]
    return []                               # gvcc.Text: any string is a value


def hostile_paths(action, files, inputs, other_outputs):
    """Names an output must refuse, with -y too or only without it: [(value, also with -y)].

    The kind (file, video, folder) comes from the argument's gvcc.Path role."""
    h = os.path.join(files["root"], "hostile")
    ro = read_only_folder(files["root"])
    role = action.type.role
    if role == "input":
        return [("", False), (os.path.join(h, "missing.y4m"), False), (os.path.join(h, "missing", "x.y4m"), False)]
    same = [(name, True) for name in inputs]
    same += [(os.path.join(h, f"{how}_{key}.y4m"), True) for key in ("clip", "other", "stream", "part0", "part1")
             if files[key] in inputs for how in ("hard", "soft")]
    same += [(name, True) for name in other_outputs]
    if role == "file":
        return same + [("", False), (os.path.join(h, "full"), True), (os.path.join(h, "empty"), True),
                       (os.path.join(h, "empty") + "/", True), (os.path.join(h, "new.gvcc") + "/", True),
                       (os.path.join(h, "missing", "o.gvcc"), True), (os.path.join(ro, "o.gvcc"), True),
                       (os.path.join(h, "plain.gvcc"), False)]
    if role == "video":
        return same + [("", False), (os.path.join(h, "full.y4m"), True), (os.path.join(h, "empty.y4m"), True),
                       (os.path.join(h, "plain"), True), (os.path.join(h, "frames"), True),
                       (os.path.join(h, "missing", "o.y4m"), True), (os.path.join(ro, "o.y4m"), True),
                       (os.path.join(h, "o.xyz"), True), (os.path.join(h, "plain.y4m"), False),
                       (os.path.join(h, "full"), False)]
    assert role == "folder", role
    return [("", False), (os.path.join(h, "plain"), True), (os.path.join(h, "missing", "tiny"), True),
            (os.path.join(ro, "tiny"), True), (os.path.join(h, "weights_like"), False)]


def cases(files, command):
    """[(label, argv, what the error line must mention)] for one subcommand."""
    sub = subparsers()[command]
    values, options = baseline(files, command)
    groups = [g._group_actions for g in sub._mutually_exclusive_groups]
    has_y = any("-y" in a.option_strings for a in sub._actions)
    path_actions = [a for a in valued(sub) if isinstance(a.type, gvcc.Path)]
    inputs = [v for a in path_actions if a.type.role == "input" and a.dest in values
              for v in (values[a.dest] if isinstance(values[a.dest], list) else [values[a.dest]])]
    out = []
    for action in valued(sub):
        if isinstance(action.type, gvcc.Path):
            others = [values[a.dest] for a in path_actions if a.type.role != "input" and a is not action
                      and a.dest in values]
            grid = hostile_paths(action, files, inputs, others)
        else:
            grid = [(v, False) for v in hostile_values(action)]
        # the baseline without this argument and without those it excludes
        excluded = {action.dest} | {a.dest for g in groups if action in g for a in g}
        flags = {f for a in sub._actions if a.dest in excluded for f in a.option_strings}
        kept = [(f, v) for f, v in options if f not in flags]
        for value, with_y in grid:
            for y in ([False, True] if with_y and has_y else [False]):
                extra = [("-y", None)] if y else []
                if action.option_strings:
                    flag = action.option_strings[0]
                    line = argv((values, kept + [(f"{flag}={value}", None)] + extra), command)
                    mention = (flag, value)
                else:
                    replaced = [value] + values[action.dest][1:] if action.nargs == "+" else value
                    line = argv((values, options + extra), command, **{action.dest: replaced})
                    mention = (value, f"argument {action.metavar or action.dest}:")
                out.append((f"{command} {action.option_strings[0] if action.option_strings else action.dest}="
                            f"{value!r}{' -y' if y else ''}", line, mention))
    return out


def snapshot(root):
    """Every entry under root with its size and modification time: what a case must leave as it was."""
    seen = set()
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            # a folder by its entries alone: the probe that tries a folder's writability touches its mtime
            seen.add((os.path.relpath(path, root),) if os.path.isdir(path) else
                     (os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
    return seen


COMMANDS = ("encode", "decode", "info", "eval", "concat", "make-tiny")


def test_every_subcommand_has_a_baseline():
    assert set(subparsers()) == set(COMMANDS)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "encode"])   # encode's made the stream
def test_the_baselines_succeed(work, command, capsys):
    """Without the hostile value each command line works, so that the grid's refusals are the values'."""
    out = os.path.join(work["root"], "out")
    assert gvcc.main(argv(baseline(work, command), command)) == 0, capsys.readouterr().err
    assert os.listdir(out) or command in ("info", "eval")
    for name in os.listdir(out):
        shutil.rmtree(os.path.join(out, name)) if os.path.isdir(os.path.join(out, name)) else \
            os.remove(os.path.join(out, name))


class WorkStarted(BaseException):
    """Raised where a command starts its work; gvcc.main lets it through."""


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work made to raise WorkStarted: loading networks, writing an output, computing metrics,
    making weights. A hostile value must be refused before any of it (a clean error at the end of the work, when
    an output cannot be renamed into place, is not enough)."""
    def refuse(what):
        def raising(*args, **kwargs):
            raise WorkStarted(what)
        return raising
    monkeypatch.setattr(gvcc, "load_codec", refuse("load_codec"))
    monkeypatch.setattr(media.AtomicFile, "__enter__", refuse("AtomicFile"))
    monkeypatch.setattr(media.VideoWriter, "__init__", refuse("VideoWriter"))
    monkeypatch.setattr(media, "evaluate", refuse("evaluate"))
    monkeypatch.setattr(wan_model, "tiny_weights", refuse("tiny_weights"))


@pytest.mark.parametrize("command", COMMANDS)
def test_hostile_arguments_are_refused_in_one_line(work, command, capsys, no_work):
    grid = cases(work, command)
    assert len(grid) >= 5
    before = snapshot(work["root"])
    bad = []
    for label, line, mention in grid:
        try:
            rc = gvcc.main(line)
        except WorkStarted as exc:
            rc = f"none: the work started ({exc})"
        out, err = capsys.readouterr()
        lines = err.splitlines()
        if rc != 1 or out or len(lines) != 1 or not lines[0].startswith("gvcc: error: ") or "Traceback" in err:
            bad.append(f"{label}: exit {rc}, stdout {out[:80]!r}, stderr {err[-300:]!r}")
        elif not any(m and m in lines[0] for m in mention):
            bad.append(f"{label}: the error does not name the argument or the value: {lines[0]}")
        after = snapshot(work["root"])
        if after != before:
            bad.append(f"{label}: changed files: {sorted(after ^ before)[:4]}")
            before = after
    assert not bad, f"{len(bad)} of {len(grid)} cases:\n" + "\n".join(bad)


# --------------------------------------------------------------------------------------------------
# What the grid cannot know: the real extent, the limits, the sampler's settings
# --------------------------------------------------------------------------------------------------

def one_error(capsys, *args):
    """gvcc.main(args) -> its one error line (asserting exit 1 and nothing else on stderr or stdout)."""
    rc = gvcc.main(list(args))
    out, err = capsys.readouterr()
    assert rc == 1 and not out and len(err.splitlines()) == 1 and err.startswith("gvcc: error: "), (rc, out, err)
    return err


def test_ranges_past_the_real_extent_state_the_valid_range(work, capsys, no_work):
    """The issue's tracebacks (`--frames 100:`, `--frames :0`, `--gops 0:99`) and the counts of encode and eval:
    refused before any work, with the range that is valid; an empty range is an error."""
    stream, part1, clip, weights = work["stream"], work["part1"], work["clip"], ["--weights", work["weights"]]
    out = os.path.join(work["root"], "out", "d.y4m")
    assert "the stream holds frames 0:9;" in one_error(capsys, "decode", stream, out, "--frames", "100:", *weights)
    assert "the stream holds frames 0:9;" in one_error(capsys, "decode", stream, out, "--frames", "3:10", *weights)
    assert "selects no frames" in one_error(capsys, "decode", stream, out, "--frames", ":0", *weights)
    assert "the stream holds GOPs 0:2;" in one_error(capsys, "decode", stream, out, "--gops", "0:99", *weights)
    # a part holds GOP 1 only, that is frames 5..8: ranges before it are past its start
    assert "the stream holds frames 5:9;" in one_error(capsys, "decode", part1, out, "--frames", "0:6", *weights)
    assert "the stream holds GOPs 1:2;" in one_error(capsys, "decode", part1, out, "--gops", ":1", *weights)
    encode = ["encode", clip, os.path.join(work["root"], "out", "e.gvcc"), *argv(baseline(work, "encode"),
                                                                               "encode")[3:]]
    assert "has 9 frames; give 1..9" in one_error(capsys, *encode, "--frames", "10")
    assert "the clip holds GOPs 0:2;" in one_error(capsys, *encode, "--gops", "1:3")
    assert "compare 1..9 frames" in one_error(capsys, "eval", clip, work["other"], "--frames", "10", "--no-lpips")
    assert os.listdir(os.path.join(work["root"], "out")) == []


@pytest.mark.parametrize("steps,tail", [(3, None), (2, 2), (1, 0), (5, 7)])
def test_settings_whose_stream_carries_no_symbol_are_refused(work, capsys, no_work, steps, tail):
    """--steps 3 with the default --tail-steps 3 (issue 19), and --steps 1 (its one step lands on t = 0, an ODE
    step): no SDE step would carry a symbol, so the stream would code nothing of the source."""
    line = [a for a in argv(baseline(work, "encode"), "encode") if a not in ("--tail-steps", "1")]
    line = [*line[:line.index("--steps")], *line[line.index("--steps") + 2:], "--steps", str(steps)]
    err = one_error(capsys, *line, *(["--tail-steps", str(tail)] if tail is not None else []))
    assert f"--steps {steps}" in err and ("no step would carry a symbol" in err or "no SDE step" in err), err


def big_stream(path):
    """A valid i2v stream of the tiny model declaring 262,144 frames in 65,536 GOPs of 5 frames (issue 20: each GOP
    after the first is one codebook byte), above the default --max-frames."""
    header = bitstream.Header(mode="i2v", model="tiny-i2v", model_fingerprint=0, generator=1, src_width=16,
                              src_height=16, width=16, height=16, frames=bitstream.MAX_FRAMES, fps_num=16,
                              fps_den=1, gop_frames=5, steps=2, tail_steps=1, g_scale_q=3000, shift_q=3000, K=2,
                              M=1, M_tail=1, tail_frames=0, seed=1, still_quality=30, residual=0, prompt="")
    first = bitstream.write_gop(header, 0, bitstream.Gop([[([0], [0]), ([1], [1])]], [b"still"], b""))
    body = (1).to_bytes(4, "big") + b"\x00"                          # gop_size 1, symbols (0, +) (0, +)
    rest = body + zlib.crc32(body).to_bytes(4, "big")
    with open(path, "wb") as fh:
        fh.write(bitstream.write_header(header) + first + rest * (bitstream.num_gops(header) - 1))
    return header


def test_limits_are_checked_before_the_gops_are_walked(work, tmp_path, capsys, monkeypatch):
    """`decode` and `info` compare the header's frame count with --max-frames before reading a GOP (issue 20:
    walking these 65,536 GOPs took seconds before the stream was refused)."""
    path = str(tmp_path / "big.gvcc")
    header = big_stream(path)
    assert bitstream.num_gops(header) == 65536

    def walked(data):
        raise WorkStarted("open_stream")
    monkeypatch.setattr(bitstream, "open_stream", walked)
    out = str(tmp_path / "d.y4m")
    for line in (["info", path], ["decode", path, out, "--weights", work["weights"]]):
        assert "262144 frames exceed --max-frames 16384" in one_error(capsys, *line)
    with pytest.raises(WorkStarted):                # with the limit raised, info walks the GOPs
        gvcc.main(["info", path, "--max-frames", str(bitstream.MAX_FRAMES)])
    assert os.listdir(tmp_path) == ["big.gvcc"]
