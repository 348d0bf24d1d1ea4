"""The built-in tools of a3s-code (`read`, `write`, `edit`, `grep`, `glob`, `ls`, `bash`) in plain
Python, standard library only, for the foreign worker (worker.py) and anyone who wants them.

The semantics are those of the Rust tools (the module docs of core/src/tools/*.rs); the cases in
tests/fixtures/tools/ pin them down and bindings-python/tests/test_tool_fixtures.py runs them
against this module. README.md (next to this file) lists what differs.

    ws = Workspace("/path/to/repo", allow_bash=False)
    outcome = run_tool(ws, "read", {"path": "src/main.rs", "offset": 10, "limit": 20})
    # {"success": True, "result": {"content": ..., ...}, "error": None}

Every path is opened beneath a descriptor of the workspace root, one component at a time with
O_NOFOLLOW; symbolic links are expanded by hand and followed only while they stay inside. Linux
and other POSIX systems with `dir_fd` support (macOS included); not Windows.
"""

import errno
import json
import os
import re
import signal
import stat
import subprocess
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Pattern, Sequence, Tuple

BUILTIN_TOOLS = ("read", "write", "edit", "grep", "glob", "ls", "bash")

DEFAULT_MAX_FILE_BYTES = 16 << 20  # what a tool holds of one file in memory
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20  # what bash keeps of each output stream
READ_DEFAULT_LIMIT = 2000  # lines
GREP_DEFAULT_MAX_RESULTS = 200
GREP_MAX_TEXT_CHARS = 500
GLOB_MAX_PATHS = 1000
BINARY_SNIFF_BYTES = 8 * 1024  # a NUL byte in this much of the start of a file: binary
MAX_SYMLINK_HOPS = 40
MAX_IGNORE_FILE_BYTES = 1 << 20
CHUNK_BYTES = 64 * 1024
BASH_DRAIN_AFTER_EXIT_S = 0.2  # output still read after the shell exited and its group was killed
SCOPE_VAR = "A3S_TASK_SCOPE"  # marks every process one bash call starts (as the Rust tool does)

Names = Tuple[str, ...]  # a workspace-relative path: plain names, () for the root


class ToolError(Exception):
    """A failure with an error code of tests/fixtures/v1/errors.json."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def invalid_payload(reason: str) -> ToolError:
    return ToolError("InvalidPayload", f"invalid payload: {reason}")


def tool_failed(tool: str, reason: str) -> ToolError:
    return ToolError("ToolFailed", f"{tool}: {reason}")


def file_too_large(tool: str, shown: str, limit: int) -> ToolError:
    return ToolError("FileTooLarge", f"{tool}: {shown}: more than {limit} bytes to hold in memory "
                                     "(the workspace's max_file_bytes)")


def io_error(tool: str, shown: str, err: OSError) -> ToolError:
    if err.errno == errno.ENOENT:
        what = "no such file or directory"
    elif err.errno in (errno.EACCES, errno.EPERM):
        what = "permission denied"
    elif err.errno == errno.ELOOP:
        what = "too many levels of symbolic links"
    else:
        what = f"{err.strerror} (os error {err.errno})"
    return tool_failed(tool, f"{shown}: {what}")


def type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def lossy(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def display(names: Sequence[str]) -> str:
    """A workspace-relative path with `/` ("." for the root); undecodable bytes replaced."""
    if not names:
        return "."
    return "/".join(lossy(os.fsencode(n)) for n in names)


# ---------------------------------------------------------------------------------------------
# The workspace and its guard
# ---------------------------------------------------------------------------------------------

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | O_CLOEXEC
O_FILE = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | O_CLOEXEC


class Workspace:
    """The directory the tools work in. Paths are relative to it (an absolute path is accepted
    when it lies inside); nothing outside is read, listed, created or changed."""

    def __init__(self, root: str, allow_bash: bool = False, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise ValueError(f"workspace root {root} is not a directory")
        given = os.path.normpath(os.path.abspath(root))
        self.alias = given if given != self.root else None  # the root as given, e.g. through a symlink
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
        self.allow_bash = allow_bash
        self.max_file_bytes = max_file_bytes
        self.max_output_bytes = max_output_bytes

    def close(self) -> None:
        os.close(self.fd)

    def escape(self, shown: str) -> ToolError:
        return ToolError("PathEscapesWorkspace", f"path {json.dumps(shown)} escapes the workspace {self.root}")

    def relative(self, path: str) -> Names:
        """The plain names `path` stands for: `.` dropped, `..` resolved lexically; refused when it
        climbs above the root at any point, or is absolute and not inside the root."""
        if "\0" in path:
            raise invalid_payload(f"path {json.dumps(path)} contains a NUL byte")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if path.startswith("/"):
            for base in (self.root, self.alias):
                prefix = [p for p in (base or "").split("/") if p]
                if base is not None and parts[:len(prefix)] == prefix:
                    parts = parts[len(prefix):]
                    break
            else:
                raise self.escape(path)
        names: List[str] = []
        for p in parts:
            if p == "..":
                if not names:
                    raise self.escape(path)
                names.pop()
            else:
                names.append(p)
        return tuple(names)

    # -- opening beneath the root --------------------------------------------------------------

    def open_file(self, tool: str, names: Names, shown: str) -> int:
        """A descriptor of the regular file at `names` (symlinks followed inside). A directory, a
        FIFO or a device is refused without blocking on it."""
        with _Walk(self, tool, shown) as w:
            try:
                last = w.enter_parent(names)
                while True:
                    if last is None:
                        fd = os.dup(w.top)
                        break
                    try:
                        fd = os.open(last, O_FILE, dir_fd=w.top)
                        break
                    except OSError as e:
                        if e.errno != errno.ELOOP or not w.is_link(last):
                            raise
                    last = w.follow(last)
            except OSError as e:
                raise io_error(tool, shown, e) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            kind = "is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise tool_failed(tool, f"{shown}: {kind}")
        return fd

    def open_dir(self, tool: str, names: Names, shown: str) -> int:
        """A descriptor of the directory at `names` (symlinks followed inside)."""
        with _Walk(self, tool, shown) as w:
            try:
                w.enter(names)
            except NotADirectoryError:
                raise tool_failed(tool, f"{shown}: not a directory") from None
            except OSError as e:
                raise io_error(tool, shown, e) from None
            return os.dup(w.top)

    def stat(self, tool: str, names: Names, shown: str) -> os.stat_result:
        """What `names` is (symlinks followed inside)."""
        with _Walk(self, tool, shown) as w:
            try:
                last = w.enter_parent(names)
                while last is not None:
                    st = os.stat(last, dir_fd=w.top, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        return st
                    last = w.follow(last)
                return os.fstat(w.top)
            except OSError as e:
                raise io_error(tool, shown, e) from None

    def read_whole(self, tool: str, names: Names, shown: str) -> str:
        """The whole regular file as UTF-8 text; binary data and files over max_file_bytes refused."""
        fd = self.open_file(tool, names, shown)
        with os.fdopen(fd, "rb") as f:
            if os.fstat(fd).st_size > self.max_file_bytes:
                raise file_too_large(tool, shown, self.max_file_bytes)
            data = f.read(self.max_file_bytes + 1)
        if len(data) > self.max_file_bytes:
            raise file_too_large(tool, shown, self.max_file_bytes)
        if b"\0" in data[:BINARY_SNIFF_BYTES]:
            raise tool_failed(tool, f"{shown}: binary file")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise tool_failed(tool, f"{shown}: not valid UTF-8 text") from None

    def replace_file(self, tool: str, names: Names, shown: str, content: bytes) -> bool:
        """Creates or replaces the regular file at `names` with `content` (missing parents created),
        by a new file renamed over the old one. A symlink as the last component is followed
        inside. False, without writing, when the file already holds exactly `content`."""
        target = self._follow_last(tool, names, shown)
        if not target:
            raise tool_failed(tool, f"{shown}: is a directory")
        parent, name = target[:-1], target[-1]
        with _Walk(self, tool, shown) as w:
            try:
                w.enter(parent, create=True)
            except OSError as e:
                raise io_error(tool, shown, e) from None
            dfd = w.top
            try:
                old: Optional[os.stat_result] = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                old = None
            if old is not None:
                if stat.S_ISDIR(old.st_mode):
                    raise tool_failed(tool, f"{shown}: is a directory")
                if not stat.S_ISREG(old.st_mode) and not stat.S_ISLNK(old.st_mode):
                    raise tool_failed(tool, f"{shown}: not a regular file")
                if not stat.S_ISREG(old.st_mode):
                    old = None
            if old is not None and old.st_size == len(content) and _same_content(dfd, name, content):
                return False
            temp = f".{name}.a3s-{uuid.uuid4().hex}.tmp"
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | O_CLOEXEC, 0o666,
                             dir_fd=dfd)
                try:
                    view = memoryview(content)
                    while view:
                        view = view[os.write(fd, view):]
                    if old is not None:
                        os.fchmod(fd, stat.S_IMODE(old.st_mode))
                finally:
                    os.close(fd)
                os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as e:
                try:
                    os.unlink(temp, dir_fd=dfd)
                except OSError:
                    pass
                raise io_error(tool, shown, e) from None
        return True

    def _follow_last(self, tool: str, names: Names, shown: str) -> Names:
        """`names` with symlinks in its last component followed, lexically, while they stay inside
        (the open beneath the root checks the rest); an absolute link is refused."""
        current = names
        for _ in range(MAX_SYMLINK_HOPS):
            if not current:
                return current
            try:
                with _Walk(self, tool, shown) as w:
                    last = w.enter_parent(current)
                    if last is None or not w.is_link(last):
                        return current
                    target = os.readlink(last, dir_fd=w.top)
            except (OSError, ToolError):
                return current  # not there (yet) or unreachable: the write itself says why
            if target.startswith("/"):
                raise self.escape(shown)
            joined: List[str] = list(current[:-1])
            for p in target.split("/"):
                if p in ("", "."):
                    continue
                if p == "..":
                    if not joined:
                        raise self.escape(shown)
                    joined.pop()
                else:
                    joined.append(p)
            current = tuple(joined)
        raise tool_failed(tool, f"{shown}: too many levels of symbolic links")


class _Walk:
    """A walk from the root descriptor down, one component at a time: a stack of open directory
    descriptors (root first). A symbolic link is expanded by hand: an absolute one, or `..` above
    the root, is refused; each open uses O_NOFOLLOW, so a component swapped for a link during the
    walk makes it fail, never leave."""

    def __init__(self, ws: Workspace, tool: str, shown: str) -> None:
        self.ws, self.tool, self.shown = ws, tool, shown
        self.stack = [os.dup(ws.fd)]
        self.hops = 0

    def __enter__(self) -> "_Walk":
        return self

    def __exit__(self, *exc: Any) -> None:
        for fd in self.stack:
            os.close(fd)
        self.stack = []

    @property
    def top(self) -> int:
        return self.stack[-1]

    def is_link(self, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=self.top, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def link_target(self, name: str) -> List[str]:
        """The components of the link `name` in the current directory, or the refusal."""
        self.hops += 1
        if self.hops > MAX_SYMLINK_HOPS:
            raise tool_failed(self.tool, f"{self.shown}: too many levels of symbolic links")
        target = os.readlink(name, dir_fd=self.top)
        if target.startswith("/"):
            raise self.ws.escape(self.shown)
        return [p for p in target.split("/") if p]

    def follow(self, name: str) -> Optional[str]:
        """Follows the link `name`: enters all but the last component of its target, returns that."""
        return self.enter_parent(self.link_target(name))

    def enter_parent(self, names: Sequence[str]) -> Optional[str]:
        """Enters every component but the last and returns it (None when the path ends at a
        directory already entered: the root, `.` or `..`)."""
        if not names or names[-1] in (".", ".."):
            self.enter(names)
            return None
        self.enter(names[:-1])
        return names[-1]

    def enter(self, names: Sequence[str], create: bool = False) -> None:
        """Enters each component as a directory (creating missing ones when asked)."""
        todo = list(reversed(names))
        retries = 0
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                if len(self.stack) == 1:
                    raise self.ws.escape(self.shown)
                os.close(self.stack.pop())
                continue
            try:
                fd = os.open(name, O_DIR, dir_fd=self.top)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and self.is_link(name):
                    todo.extend(reversed(self.link_target(name)))
                    continue
                if e.errno == errno.ENOENT and create and retries < MAX_SYMLINK_HOPS:
                    retries += 1
                    try:
                        os.mkdir(name, 0o777, dir_fd=self.top)
                    except FileExistsError:
                        pass  # created meanwhile: the next open says what it is
                    todo.append(name)
                    continue
                raise
            self.stack.append(fd)


def _same_content(dfd: int, name: str, content: bytes) -> bool:
    try:
        fd = os.open(name, O_FILE, dir_fd=dfd)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        return f.read(len(content) + 1) == content


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

class Args:
    """A tool's argument object, with typed accessors whose errors name the tool and key. A
    `null` value counts as absent; unknown keys are ignored."""

    def __init__(self, tool: str, payload: Dict[str, Any]) -> None:
        self.tool, self.payload = tool, payload

    def _get(self, key: str) -> Any:
        return self.payload.get(key)

    def _ill_typed(self, key: str, expected: str, got: Any) -> ToolError:
        return invalid_payload(f"{self.tool}: `{key}` must be {expected}, got {type_name(got)}")

    def string(self, key: str) -> str:
        v = self.opt_string(key)
        if v is None:
            raise invalid_payload(f"{self.tool}: missing required key `{key}` (a string)")
        return v

    def opt_string(self, key: str) -> Optional[str]:
        v = self._get(key)
        if v is None:
            return None
        if not isinstance(v, str):
            raise self._ill_typed(key, "a string", v)
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: JSON Python accepts and Rust does not
            raise invalid_payload(f"{self.tool}: `{key}` is not valid Unicode") from None
        return v

    def flag(self, key: str) -> bool:
        v = self._get(key)
        if v is None:
            return False
        if isinstance(v, bool):
            return v
        raise self._ill_typed(key, "a boolean", v)

    def opt_count(self, key: str, minimum: int) -> Optional[int]:
        v = self._get(key)
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool) and minimum <= v < 1 << 64:
            return v
        raise self._ill_typed(key, f"an integer >= {minimum}", v)

    def path(self, ws: Workspace, key: str, required: bool) -> Tuple[Names, str]:
        """The workspace-relative names under `key` (the root when absent and not required), and the
        path as the user wrote it, for messages."""
        raw = self.string(key) if required else (self.opt_string(key) or "")
        return ws.relative(raw), raw or "."


# ---------------------------------------------------------------------------------------------
# read, write, edit
# ---------------------------------------------------------------------------------------------

def tool_read(a: Args, ws: Workspace) -> Dict[str, Any]:
    names, shown = a.path(ws, "path", True)
    offset = max(a.opt_count("offset", 0) or 1, 1)
    limit = a.opt_count("limit", 1) or READ_DEFAULT_LIMIT
    fd = ws.open_file(a.tool, names, shown)
    first = offset - 1  # 0-based index of the first line returned
    cap = ws.max_file_bytes
    content = bytearray()
    total = 0  # lines seen
    end = 0  # lines returned end here (exclusive, 0-based)
    full = False  # the content cap stopped the window early
    try:
        with os.fdopen(fd, "rb", buffering=0) as f:
            head = _read_upto(f, BINARY_SNIFF_BYTES)
            if b"\0" in head:
                raise tool_failed(a.tool, f"{shown}: binary file")
            lines = _Lines(f, head)
            while True:
                if not full and total >= first and total - first < limit:
                    before = len(content)
                    found = lines.next(content, cap)
                    if found == _ENDED:
                        break
                    if found == _READ:
                        end = total + 1
                    else:  # too long: the rest of this line is only counted
                        del content[before:]
                        if before == 0:
                            raise file_too_large(a.tool, shown, cap)
                        full = True
                        lines.next(None, 0)
                elif lines.next(None, 0) == _ENDED:
                    break
                total += 1
    except OSError as e:
        raise io_error(a.tool, shown, e) from None
    if first > total or (first == total and total > 0):
        raise tool_failed(a.tool, f"{shown}: offset {offset} is past the end of the file ({total} lines)")
    end = max(end, first)
    try:
        text = bytes(content).decode("utf-8")
    except UnicodeDecodeError:
        raise tool_failed(a.tool, f"{shown}: not valid UTF-8 text") from None
    return {"content": text, "total_lines": total, "start_line": first + 1, "end_line": end,
            "truncated": end < total}


_READ, _ENDED, _TOO_LONG = "read", "ended", "too long"


def _read_upto(f: Any, n: int) -> bytes:
    """The next `n` bytes of `f`, fewer only at its end."""
    out = bytearray()
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


class _Lines:
    """The lines of a file read in chunks: memory is one chunk plus what the caller keeps."""

    def __init__(self, f: Any, head: bytes) -> None:
        self.f, self.buf, self.eof = f, bytearray(head), False

    def next(self, keep: Optional[bytearray], cap: int) -> str:
        """Reads one line (with its terminator, or the last one without), appending it to `keep`
        while `keep` stays within `cap` bytes (_TOO_LONG otherwise: what was appended stays, the
        caller drops it), or only skipping over it when `keep` is None. _ENDED: nothing left."""
        any_ = False
        while True:
            if not self.buf:
                if self.eof:
                    return _READ if any_ else _ENDED
                chunk = self.f.read(CHUNK_BYTES)
                if chunk:
                    self.buf += chunk
                else:
                    self.eof = True
                continue
            any_ = True
            nl = self.buf.find(b"\n")
            used = nl + 1 if nl >= 0 else len(self.buf)
            if keep is not None:
                if len(keep) + used > cap:
                    return _TOO_LONG
                keep += self.buf[:used]
            del self.buf[:used]
            if nl >= 0:
                return _READ


def tool_write(a: Args, ws: Workspace) -> Dict[str, Any]:
    names, shown = a.path(ws, "path", True)
    content = a.string("content").encode("utf-8")
    if ws.replace_file(a.tool, names, shown, content):
        return {"bytes_written": len(content)}
    return {"bytes_written": len(content), "unchanged": True}


def tool_edit(a: Args, ws: Workspace) -> Dict[str, Any]:
    names, shown = a.path(ws, "path", True)
    old = a.string("old_string")
    new = a.string("new_string")
    replace_all = a.flag("replace_all")
    if not old:
        raise invalid_payload("edit: `old_string` must not be empty")
    text = ws.read_whole(a.tool, names, shown)
    count = text.count(old)
    if count == 0:
        if new and new in text:
            return {"replacements": 0, "already_applied": True}
        raise tool_failed(a.tool, f"{shown}: old_string not found")
    if _covered_by_new(text, old, new):
        return {"replacements": 0, "already_applied": True}
    if count > 1 and not replace_all:
        raise tool_failed(a.tool, f"{shown}: old_string found {count} times; add context to make it unique "
                                  "or set replace_all")
    updated = text.replace(old, new) if replace_all else text.replace(old, new, 1)
    if updated != text:
        ws.replace_file(a.tool, names, shown, updated.encode("utf-8"))
    return {"replacements": count}


def _covered_by_new(text: str, old: str, new: str) -> bool:
    """Whether every occurrence of `old` in `text` lies within an occurrence of `new` (which
    contains `old`) at the offset where `old` appears in `new`: the edit was already made."""
    offsets = [k for k in range(len(new)) if new.startswith(old, k)]
    if not offsets:
        return False
    new_starts = set()
    start = text.find(new)
    while start >= 0:
        new_starts.add(start)
        start = text.find(new, start + 1)
    if not new_starts:
        return False
    pos = text.find(old)
    while pos >= 0:  # non-overlapping occurrences, as str.count and str.replace see them
        if not any(pos - k >= 0 and (pos - k) in new_starts for k in offsets):
            return False
        pos = text.find(old, pos + len(old))
    return True


# ---------------------------------------------------------------------------------------------
# Globs (the rules of the Rust `globset` crate, as the Rust tools use it) and ignore files
# ---------------------------------------------------------------------------------------------

class GlobError(Exception):
    pass


_POSIX_CLASSES = {
    "alnum": [("0", "9"), ("A", "Z"), ("a", "z")], "alpha": [("A", "Z"), ("a", "z")],
    "blank": [("\t", "\t"), (" ", " ")], "cntrl": [("\x00", "\x1f"), ("\x7f", "\x7f")],
    "digit": [("0", "9")], "graph": [("!", "~")], "lower": [("a", "z")], "print": [(" ", "~")],
    "punct": [("!", "/"), (":", "@"), ("[", "`"), ("{", "~")], "space": [("\t", "\r"), (" ", " ")],
    "upper": [("A", "Z")], "xdigit": [("0", "9"), ("A", "F"), ("a", "f")],
}

# Tokens: ("lit", c) ("any",) ("zom",) ("rprefix",) ("rsuffix",) ("rzom",) ("class", negated, ranges)
# ("alt", [tokens, ...])
Token = Tuple[Any, ...]


class _GlobParser:
    def __init__(self, glob: str, allow_unclosed_class: bool) -> None:
        self.glob, self.chars, self.i = glob, glob, 0
        self.prev: Optional[str] = None
        self.cur: Optional[str] = None
        self.alternates: List[int] = []
        self.branches: List[List[Token]] = [[]]
        self.allow_unclosed_class = allow_unclosed_class
        self.found_unclosed_class = False

    def bump(self) -> Optional[str]:
        self.prev = self.cur
        self.cur = self.chars[self.i] if self.i < len(self.chars) else None
        if self.cur is not None:
            self.i += 1
        return self.cur

    def peek(self) -> Optional[str]:
        return self.chars[self.i] if self.i < len(self.chars) else None

    def parse(self) -> List[Token]:
        while True:
            c = self.bump()
            if c is None:
                break
            if c == "?":
                self.push(("any",))
            elif c == "*":
                self.parse_star()
            elif c == "[" and not self.found_unclosed_class:
                self.parse_class()
            elif c == "{":
                if len(self.alternates) >= 100:
                    raise GlobError("alternate groups nested too deeply")
                self.alternates.append(len(self.branches))
                self.branches.append([])
            elif c == "}":
                if not self.alternates:
                    raise GlobError("unopened alternate group; missing '{' (maybe escape '}' with '[}]'?)")
                start = self.alternates.pop()
                alts = self.branches[start:]
                del self.branches[start:]
                self.push(("alt", alts))
            elif c == ",":
                if self.alternates:
                    self.branches.append([])
                else:
                    self.push(("lit", ","))
            elif c == "\\":
                n = self.bump()
                if n is None:
                    raise GlobError("dangling '\\'")
                self.push(("lit", n))
            else:
                self.push(("lit", c))
        if len(self.branches) > 1:
            raise GlobError("unclosed alternate group; missing '}' (maybe escape '{' with '[{]'?)")
        return self.branches[0]

    def push(self, tok: Token) -> None:
        self.branches[-1].append(tok)

    def parse_star(self) -> None:
        prev = self.prev
        if self.peek() != "*":
            self.push(("zom",))
            return
        self.bump()
        if not self.branches[-1]:
            if self.peek() not in (None, "/"):
                self.push(("zom",))
                self.push(("zom",))
            else:
                self.push(("rprefix",))
                self.bump()
            return
        if prev != "/":
            if len(self.branches) <= 1 or (prev != "," and prev != "{"):
                self.push(("zom",))
                self.push(("zom",))
                return
        nxt = self.peek()
        if nxt is None:
            self.bump()
            is_suffix = True
        elif nxt in (",", "}") and len(self.branches) >= 2:
            is_suffix = True
        elif nxt == "/":
            self.bump()
            is_suffix = False
        else:
            self.push(("zom",))
            self.push(("zom",))
            return
        last = self.branches[-1].pop()
        if last[0] in ("rprefix", "rsuffix"):
            self.push(last)
        else:
            self.push(("rsuffix",) if is_suffix else ("rzom",))

    def parse_class(self) -> None:
        saved = (self.i, self.prev, self.cur)
        ranges: List[Tuple[str, str]] = []
        negated = False
        if self.peek() in ("!", "^"):
            self.bump()
            negated = True
        first, in_range = True, False
        while True:
            c = self.bump()
            if c is None:
                if self.allow_unclosed_class:
                    self.i, self.prev, self.cur = saved
                    self.found_unclosed_class = True
                    self.push(("lit", "["))
                    return
                raise GlobError("unclosed character class; missing ']'")
            if c == "]":
                if first:
                    ranges.append(("]", "]"))
                else:
                    break
            elif c == "-":
                if first:
                    ranges.append(("-", "-"))
                elif in_range:
                    self._extend(ranges, "-")
                    in_range = False
                else:
                    in_range = True
            elif c == "[" and not in_range and self.peek() == ":":
                posix = self._posix_class()
                ranges.extend(posix if posix is not None else [("[", "[")])
                in_range = False
            else:
                if in_range:
                    self._extend(ranges, c)
                else:
                    ranges.append((c, c))
                in_range = False
            first = False
        if in_range:
            ranges.append(("-", "-"))
        self.push(("class", negated, ranges))

    @staticmethod
    def _extend(ranges: List[Tuple[str, str]], c: str) -> None:
        start = ranges[-1][0]
        ranges[-1] = (start, c)
        if c < start:
            raise GlobError(f"invalid range; '{start}' > '{c}'")

    def _posix_class(self) -> Optional[List[Tuple[str, str]]]:
        saved = (self.i, self.prev, self.cur)
        self.bump()  # ':'
        name = ""
        while True:
            c = self.bump()
            if c == ":" and self.peek() == "]":
                self.bump()
                found = _POSIX_CLASSES.get(name)
                if found is None:  # the Rust parser gives up here too, without restoring
                    return None
                return found
            if c is not None and "a" <= c <= "z" and len(name) < 8:
                name += c
                continue
            self.i, self.prev, self.cur = saved
            return None


def _byte_escape(c: str) -> str:
    return "".join(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogatepass"))


def _tokens_to_regex(tokens: List[Token]) -> str:
    out = []
    for tok in tokens:
        kind = tok[0]
        if kind == "lit":
            out.append(_byte_escape(tok[1]))
        elif kind == "any":
            out.append("[^/]")
        elif kind == "zom":
            out.append("[^/]*")
        elif kind == "rprefix":
            out.append("(?:/?|.*/)")
        elif kind == "rsuffix":
            out.append("/.*")
        elif kind == "rzom":
            out.append("(?:/|/.*/)")
        elif kind == "class":
            negated, ranges = tok[1], tok[2]
            use = ranges
            if not negated:  # literal_separator: a class never matches '/'
                use = []
                for s, e in ranges:
                    if s > "/" or e < "/":
                        use.append((s, e))
                    elif s == "/" and e == "/":
                        pass
                    elif s == "/":
                        use.append(("0", e))
                    elif e == "/":
                        use.append((s, "."))
                    else:
                        use.extend([(s, "."), ("0", e)])
            if not use:
                out.append("[^\\s\\S]")
            else:
                body = "".join(_byte_escape(s) if s == e else f"{_byte_escape(s)}-{_byte_escape(e)}" for s, e in use)
                out.append(f"[{'^/' if negated else ''}{body}]")
        else:  # alt
            parts = [p for p in (_tokens_to_regex(branch) for branch in tok[1]) if p]
            if parts:
                out.append("(?:" + "|".join(parts) + ")")
    return "".join(out)


def compile_glob(pattern: str, allow_unclosed_class: bool = False) -> "Pattern[bytes]":
    """A glob as the Rust tools compile it (globset: literal separator, backslash escapes),
    matching a whole `/`-separated path given as bytes."""
    tokens = _GlobParser(pattern, allow_unclosed_class).parse()
    if tokens == [("rprefix",)]:
        return re.compile(b"^.*\\Z", re.DOTALL)
    return re.compile(("^" + _tokens_to_regex(tokens) + "\\Z").encode("ascii"), re.DOTALL)


class GlobFilter:
    """The matching rule of `glob` and of grep's `glob`: the workspace-relative path, the path
    relative to the walk's start, or, for a pattern without `/`, the file name."""

    def __init__(self, tool: str, pattern: str) -> None:
        try:
            self.regex = compile_glob(pattern)
        except GlobError as e:
            raise tool_failed(tool, f"invalid glob {json.dumps(pattern)}: {e}") from None
        self.by_name = "/" not in pattern
        self.wants_hidden = pattern.startswith(".") or "/." in pattern

    def is_match(self, base: Names, file: Names) -> bool:
        in_base = file[len(base):] if file[:len(base)] == base else file
        return (self._m(file) or self._m(in_base)
                or (self.by_name and bool(file) and self._m(file[-1:])))

    def _m(self, names: Sequence[str]) -> bool:
        return self.regex.match(os.fsencode("/".join(names))) is not None


class _IgnoreRules:
    """One directory's ignore rules (exclude, .gitignore, .ignore: a later line wins), chained to
    those of the directories above it (a deeper directory's rules win)."""

    def __init__(self, at: Names, globs: List[Tuple["Pattern[bytes]", bool, bool]],
                 above: Optional["_IgnoreRules"]) -> None:
        self.at, self.globs, self.above = at, globs, above


def _gitignore_line(line: str) -> Optional[Tuple["Pattern[bytes]", bool, bool]]:
    """(regex, whitelist, only_dir) of one ignore-file line, as the Rust `ignore` crate reads it;
    None for a comment, a blank or a malformed line."""
    if line.startswith("#"):
        return None
    line = _trim_trailing_spaces(line)
    if not line:
        return None
    whitelist = absolute = only_dir = False
    if line.startswith("\\!") or line.startswith("\\#"):
        line = line[1:]
        absolute = line.startswith("/")
    else:
        if line.startswith("!"):
            whitelist = True
            line = line[1:]
        if line.startswith("/"):
            line = line[1:]
            absolute = True
    if not line:
        return None
    if line.endswith("/"):
        only_dir = True
        line = line[:-1]
        if line.endswith("\\"):
            line = line[:-1]
    actual = line
    if not absolute and "/" not in line and not (actual.startswith("**/") or actual == "**"):
        actual = "**/" + actual
    if actual.endswith("/**"):
        actual += "/*"
    try:
        return compile_glob(actual, allow_unclosed_class=True), whitelist, only_dir
    except GlobError:
        return None


def _trim_trailing_spaces(line: str) -> str:
    last_space: Optional[int] = None
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            if i + 1 >= len(line):
                return line
            i += 2
            last_space = None
        elif c == " ":
            if last_space is None:
                last_space = i
            i += 1
        else:
            last_space = None
            i += 1
    return line if last_space is None else line[:last_space]


def _is_ignored(rules: Optional[_IgnoreRules], rel: Names, is_dir: bool) -> bool:
    while rules is not None:
        path = os.fsencode("/".join(rel[len(rules.at):]))
        for regex, whitelist, only_dir in reversed(rules.globs):
            if (not only_dir or is_dir) and regex.match(path):
                return not whitelist
        rules = rules.above
    return False


def _read_small(dfd: int, names: Sequence[str]) -> str:
    """An ignore file beneath the directory `dfd` (no symlink followed; at most 1 MiB; missing or
    unreadable reads as empty)."""
    fds: List[int] = []
    try:
        cur = dfd
        for name in names[:-1]:
            cur = os.open(name, O_DIR, dir_fd=cur)
            fds.append(cur)
        fd = os.open(names[-1], O_FILE, dir_fd=cur)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ""
            return lossy(f.read(MAX_IGNORE_FILE_BYTES))
    except OSError:
        return ""
    finally:
        for fd in fds:
            os.close(fd)


def _load_rules(dfd: int, at: Names, above: Optional[_IgnoreRules]) -> Optional[_IgnoreRules]:
    sources = []
    if not at:
        sources.append(_read_small(dfd, (".git", "info", "exclude")))
    sources += [_read_small(dfd, (".gitignore",)), _read_small(dfd, (".ignore",))]
    globs = []
    for source in sources:
        for line in source.split("\n"):
            parsed = _gitignore_line(line[:-1] if line.endswith("\r") else line)
            if parsed is not None:
                globs.append(parsed)
    return _IgnoreRules(at, globs, above) if globs else above


class _Dir:
    """An open directory shared by the subdirectories waiting to be opened from it."""

    def __init__(self, fd: int) -> None:
        self.fd, self.refs = fd, 1

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)


def walk_files(ws: Workspace, tool: str, start: Names, shown: str, hidden: bool) -> List[Names]:
    """The workspace-relative names of the regular files below the directory `start`: ignore
    files honoured, hidden entries skipped unless `hidden`, symbolic links neither followed nor
    returned, other non-regular files and unreadable directories skipped."""
    start_fd = ws.open_dir(tool, start, shown)
    rules: Optional[_IgnoreRules] = None
    for i in range(len(start)):  # the rules of the directories above `start`, root first
        try:
            fd = ws.open_dir(tool, start[:i], shown)
        except ToolError:
            continue
        try:
            rules = _load_rules(fd, start[:i], rules)
        finally:
            os.close(fd)
    files: List[Names] = []
    pending: List[Tuple[_Dir, str, Names, Optional[_IgnoreRules]]] = []

    def visit(fd: int, rel: Names, above: Optional[_IgnoreRules]) -> None:
        here = _Dir(fd)
        try:
            rules = _load_rules(fd, rel, above)
            with os.scandir(fd) as entries:
                for entry in entries:
                    name = entry.name
                    if not hidden and name.startswith("."):
                        continue
                    child = rel + (name,)
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                        is_file = entry.is_file(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir:
                        if not _is_ignored(rules, child, True):
                            here.refs += 1
                            pending.append((here, name, child, rules))
                    elif is_file and not _is_ignored(rules, child, False):
                        files.append(child)
        except OSError:
            pass
        finally:
            here.release()

    visit(start_fd, start, rules)
    while pending:
        parent, name, rel, above = pending.pop()
        try:
            fd = os.open(name, O_DIR, dir_fd=parent.fd)
        except OSError:
            fd = -1
        finally:
            parent.release()
        if fd >= 0:
            visit(fd, rel, above)
    return files


# ---------------------------------------------------------------------------------------------
# grep, glob, ls
# ---------------------------------------------------------------------------------------------

_NEWLINE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\(?:n|x0[aA]|x\{0*[aA]\}|u000[aA]|012)")


def tool_grep(a: Args, ws: Workspace) -> Dict[str, Any]:
    pattern = a.string("pattern")
    target, shown = a.path(ws, "path", False)
    glob_arg = a.opt_string("glob")
    glob = GlobFilter(a.tool, glob_arg) if glob_arg is not None else None
    flags = re.IGNORECASE if a.flag("case_insensitive") else 0
    max_results = a.opt_count("max_results", 1) or GREP_DEFAULT_MAX_RESULTS
    if "\n" in pattern or _NEWLINE_ESCAPE.search(pattern):
        raise tool_failed(a.tool, f"invalid regex {json.dumps(pattern)}: a match never spans lines; "
                                  "the pattern may not need a line terminator")
    try:
        regex = re.compile(pattern, flags)
    except re.error as e:
        raise tool_failed(a.tool, f"invalid regex {json.dumps(pattern)}: {e}") from None
    is_dir = stat.S_ISDIR(ws.stat(a.tool, target, shown).st_mode)
    if is_dir:
        found = walk_files(ws, a.tool, target, shown, glob is not None and glob.wants_hidden)
        files = sorted((display(f), f) for f in found if glob is None or glob.is_match(target, f))
    else:
        files = [(display(target), target)]
    matches: List[Dict[str, Any]] = []
    truncated = False
    for shown_file, names in files:
        try:
            fd = ws.open_file(a.tool, names, shown_file)
        except ToolError:
            if is_dir:
                continue  # gone, swapped or unreadable since the walk: skipped
            raise
        hits = _search(fd, regex, max_results - len(matches) + 1)
        for line, text in hits or []:
            if len(matches) == max_results:
                truncated = True
                break
            matches.append({"path": shown_file, "line": line, "text": text})
        if truncated:
            break
    return {"matches": matches, "truncated": truncated}


def _search(fd: int, regex: "Pattern[str]", room: int) -> Optional[List[Tuple[int, str]]]:
    """The matching lines of one file, at most `room`; None for a binary file (a NUL byte in
    what was read) or one that cannot be read."""
    hits: List[Tuple[int, str]] = []
    line_no = 0
    partial: List[bytes] = []  # the start of a line that goes on in the next chunk

    def check(raw: bytes) -> bool:
        """Records `raw` (line `line_no`, without its `\\n`) if it matches; False when full."""
        if regex.search(lossy(raw)):
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            hits.append((line_no, lossy(raw)[:GREP_MAX_TEXT_CHARS]))
        return len(hits) < room

    try:
        with os.fdopen(fd, "rb", buffering=0) as f:
            while True:
                chunk = f.read(CHUNK_BYTES)
                if not chunk:
                    break
                if b"\0" in chunk:
                    return None
                pieces = chunk.split(b"\n")
                if len(pieces) == 1:
                    partial.append(chunk)
                    continue
                pieces[0] = b"".join(partial + [pieces[0]])
                rest = pieces.pop()
                partial = [rest] if rest else []
                for raw in pieces:
                    line_no += 1
                    if not check(raw):
                        return hits
            if partial:
                line_no += 1
                check(b"".join(partial))
    except OSError:
        return None
    return hits


def tool_glob(a: Args, ws: Workspace) -> Dict[str, Any]:
    pattern = a.string("pattern")
    start, shown = a.path(ws, "path", False)
    glob = GlobFilter(a.tool, pattern)
    found = walk_files(ws, a.tool, start, shown, glob.wants_hidden)
    paths = sorted(display(f) for f in found if glob.is_match(start, f))
    return {"paths": paths[:GLOB_MAX_PATHS], "truncated": len(paths) > GLOB_MAX_PATHS}


def tool_ls(a: Args, ws: Workspace) -> Dict[str, Any]:
    names, shown = a.path(ws, "path", False)
    fd = ws.open_dir(a.tool, names, shown)
    entries = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                try:
                    st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    st = None
                if st is None:
                    kind, size = "other", 0
                elif stat.S_ISLNK(st.st_mode):
                    kind, size = "symlink", st.st_size
                elif stat.S_ISDIR(st.st_mode):
                    kind, size = "dir", 0
                elif stat.S_ISREG(st.st_mode):
                    kind, size = "file", st.st_size
                else:
                    kind, size = "other", 0
                entries.append((display((entry.name,)), kind, size))
    except OSError as e:
        raise io_error(a.tool, shown, e) from None
    finally:
        os.close(fd)
    return {"entries": [{"name": n, "kind": k, "size": s} for n, k, s in sorted(entries)]}


# ---------------------------------------------------------------------------------------------
# bash
# ---------------------------------------------------------------------------------------------

class _Capture:
    """One output stream, kept up to a cap; the rest read and discarded."""

    def __init__(self, cap: int) -> None:
        self.cap, self.buf, self.truncated = cap, bytearray(), False
        self.lock = threading.Lock()

    def pump(self, fd: int) -> None:
        try:
            while True:
                try:
                    data = os.read(fd, 8192)
                except OSError:
                    break
                if not data:
                    break
                with self.lock:
                    room = max(self.cap - len(self.buf), 0)
                    self.buf += data[:room]
                    if len(data) > room:
                        self.truncated = True
        finally:
            os.close(fd)

    def text(self) -> str:
        with self.lock:
            return lossy(bytes(self.buf))


def tool_bash(a: Args, ws: Workspace, stop: Optional[threading.Event] = None) -> Dict[str, Any]:
    command = a.string("command")
    timeout_ms = a.opt_count("timeout_ms", 1)
    if "\0" in command:
        raise invalid_payload("bash: `command` must not contain a NUL byte")
    if not ws.allow_bash:
        raise tool_failed(a.tool, "bash is disabled on this worker (set A3S_ALLOW_BASH=1 or pass --allow-bash)")
    stop = stop or threading.Event()
    if stop.is_set():
        return _bash_outcome("", "", None, True, False)
    scope = uuid.uuid4().hex
    env = dict(os.environ, **{SCOPE_VAR: scope})
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(["sh", "-c", command], cwd=ws.root, env=env, stdin=subprocess.DEVNULL,
                                stdout=out_w, stderr=err_w, start_new_session=True)
    except OSError as e:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise tool_failed(a.tool, f"cannot start sh: {e}") from None
    os.close(out_w)
    os.close(err_w)
    out, err = _Capture(ws.max_output_bytes), _Capture(ws.max_output_bytes)
    pumps = [threading.Thread(target=c.pump, args=(fd,), daemon=True) for c, fd in ((out, out_r), (err, err_r))]
    for p in pumps:
        p.start()
    timed_out = threading.Event()

    def watch() -> None:
        """Ends every process of the call at the timeout, when told to stop, or once the shell
        has exited (what it left behind)."""
        timeout = None if timeout_ms is None else timeout_ms / 1000
        if not stop.wait(timeout) and proc.poll() is None:
            timed_out.set()
        _end_all(proc.pid, scope)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        code = proc.wait()
    finally:
        stop.set()
        watcher.join()
    for p in pumps:
        p.join(BASH_DRAIN_AFTER_EXIT_S)  # whatever still holds a pipe open escaped: stop waiting
    exit_code = None if timed_out.is_set() or code < 0 else code
    return _bash_outcome(out.text(), err.text(), exit_code, timed_out.is_set(), out.truncated or err.truncated)


def _bash_outcome(stdout: str, stderr: str, exit_code: Optional[int], timed_out: bool,
                  truncated: bool) -> Dict[str, Any]:
    return {"stdout": stdout, "stderr": stderr, "exit_code": exit_code, "timed_out": timed_out,
            "truncated": truncated}


def bash_failure(result: Dict[str, Any]) -> Optional[str]:
    """Why a bash result counts as a failure (None for exit code 0)."""
    code = result.get("exit_code")
    if code == 0:
        return None
    if code is not None:
        return f"command exited with code {code}"
    if result.get("timed_out"):
        return "command timed out and was killed"
    return "command was terminated by a signal"


def _end_all(pgid: int, scope: str) -> None:
    """SIGKILL to the command's process group and, on Linux, to every process whose environment
    carries this call's scope marker (also after setsid or a double fork). Each is opened as a
    pidfd before its environment is read, so a recycled process id is never signalled."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    if not os.path.isdir("/proc") or not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return
    marker = f"{SCOPE_VAR}={scope}".encode()
    me = os.getpid()
    for _ in range(64):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                pidfd = os.pidfd_open(int(entry))
            except OSError:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    carries = marker in f.read().split(b"\0")
                if carries:
                    found = True
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(pidfd)
        if not found:
            return
        time.sleep(0.001)  # a process forking while it is being killed is found by the next pass


# ---------------------------------------------------------------------------------------------
# The dispatcher
# ---------------------------------------------------------------------------------------------

_TOOLS: Dict[str, Callable[[Args, Workspace], Dict[str, Any]]] = {
    "read": tool_read, "write": tool_write, "edit": tool_edit, "grep": tool_grep, "glob": tool_glob,
    "ls": tool_ls,
}


def run_tool(ws: Workspace, command: str, payload: Any, stop: Optional[threading.Event] = None) -> Dict[str, Any]:
    """Runs one built-in tool and never raises: the `result` object of a result envelope,
    `{"success", "result", "error"}`, as `execute_builtin` of the Rust core answers.

    A failure is `success: false, result: {"error_code": ...}` with the message in `error`;
    `bash` succeeds only with exit code 0, and a failed `bash` keeps its whole result. Setting
    `stop` ends a running `bash` command (and everything it started)."""
    try:
        if command not in BUILTIN_TOOLS:
            raise ToolError("UnknownTool", f"unknown tool {json.dumps(command)} "
                                           f"(built-in tools: {', '.join(BUILTIN_TOOLS)})")
        if not isinstance(payload, dict):
            raise invalid_payload(f"{command}: arguments must be a JSON object, got {type_name(payload)}")
        args = Args(command, payload)
        if command == "bash":
            result = tool_bash(args, ws, stop)
            failure = bash_failure(result)
            return {"success": failure is None, "result": result, "error": failure}
        return {"success": True, "result": _TOOLS[command](args, ws), "error": None}
    except ToolError as e:
        return {"success": False, "result": {"error_code": e.code}, "error": str(e)}
    except OSError as e:  # an I/O failure no tool anticipated
        return {"success": False, "result": {"error_code": "ToolFailed"}, "error": f"{command}: {e}"}
