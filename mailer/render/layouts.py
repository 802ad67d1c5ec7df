"""Where layouts come from and what they may do: the editor's folder before the built-in layouts, no file outside
it read through a link, Jinja's immutable sandbox with bounded `*` and `**`, a memory ceiling for a rendering, and
the pages of `mailer serve` rendered from web/page.html.j2.

Must not read an issue or its front matter (render/__init__.py does)."""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import os
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.loaders import split_template_path
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailer.errors import TemplateError

# The built-in layouts travel inside the package (a wheel, a zip or a checkout alike), read through importlib.resources.
BUILTIN_TEMPLATES = importlib.resources.files("mailer") / "templates"


HTML_LAYOUT = "issue.html.j2"


TEXT_LAYOUT = "issue.txt.j2"


class BuiltinLoader(jinja2.BaseLoader):
    """Jinja loader for the layouts shipped in the package (`sub`: a folder inside them, e.g. "web")."""

    def __init__(self, sub: str = "") -> None:
        self.root = BUILTIN_TEMPLATES / sub if sub else BUILTIN_TEMPLATES

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        node = self.root
        for part in template.split("/"):
            if part in ("", ".", ".."):
                raise jinja2.TemplateNotFound(template)
            node = node / part
        if not node.is_file():
            raise jinja2.TemplateNotFound(template)
        return node.read_text(encoding="utf-8"), str(node), lambda: True


def builtin_layouts() -> Iterator[tuple[str, bytes]]:
    """Every built-in layout file as (path inside the layouts folder, bytes): what `mailer new` copies."""
    folders = [("", BUILTIN_TEMPLATES)]
    while folders:
        prefix, folder = folders.pop()
        for node in sorted(folder.iterdir(), key=lambda n: n.name):
            if node.is_dir():
                folders.append((f"{prefix}{node.name}/", node))
            elif node.name.endswith(".j2"):
                yield prefix + node.name, node.read_bytes()


def layout_files(templates_dir: Path | None) -> list[Path]:
    """The layout files on disk that a rendering may read (what a live preview watches)."""
    folders = [Path(templates_dir)] if templates_dir else []
    if isinstance(BUILTIN_TEMPLATES, Path):  # a wheel or a checkout; a zip import has nothing to watch
        folders.append(BUILTIN_TEMPLATES)
    return [path for folder in folders for path in sorted(folder.glob("*.j2"))]


class _LayoutFolderLoader(jinja2.FileSystemLoader):
    """The editor's layouts folder. What a layout loads must be a file, and one reached through a symlink out of the
    folder must be a layout (*.j2): the sandbox keeps layouts from reading the machine's files, but a link shipped
    with a layouts folder (`x.j2 -> /proc/self/environ`, `-> ../mailer.db.secret`) and `{% include "x.j2" %}`
    put the SMTP password or the signing secret into every message, and a link to /dev/zero read forever."""

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder))
        self.folder = folder

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        path = self.folder.joinpath(*split_template_path(template))
        if path.exists():  # a name that is not there falls through to the built-in layouts, as before
            real = path.resolve()
            if not real.is_file():
                raise SecurityError(f"layout {template!r} is not a file ({real})")
            if not real.is_relative_to(self.folder.resolve()) and not real.name.endswith(".j2"):
                raise SecurityError(
                    f"layout {template!r} leads to {real}, outside the layouts folder {self.folder}; "
                    "only layouts (*.j2) may be linked from elsewhere"
                )
        return super().get_source(environment, template)


def _layout_loader(templates_dir: Path | None, sub: str = "") -> jinja2.BaseLoader:
    """The editor's folder first; a layout it lacks comes from the built-in ones."""
    builtin = BuiltinLoader(sub)
    if templates_dir is None:
        return builtin
    return jinja2.ChoiceLoader([_LayoutFolderLoader(Path(templates_dir) / sub), builtin])


MAX_REPEAT = 100_000  # longest string or list `*` may build: a layout needs a rule of a few dozen characters


MAX_POWER_BITS = 4096  # largest integer `**` may build


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with no globals (range, cycler, lipsum...: only the variables mailer documents
    exist), attributes of an undefined value refused outright, and `*` / `**` kept from building huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.clear()

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, jinja2.Undefined):  # `cycler.__init__` when cycler is not a variable: say so
            obj._fail_with_undefined_error()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, jinja2.Undefined):
            obj._fail_with_undefined_error()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int) and len(seq) * count > MAX_REPEAT:
                    raise SecurityError(f"the result of * would be too large ({len(seq) * count:,} items)")
        elif isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_POWER_BITS:
            raise SecurityError("the result of ** would be too large")
        return super().call_binop(context, operator, left, right)


MAX_RENDER_MEMORY = 512 << 20  # address space a rendering may add to the process's; an issue takes a few MB


_ceiling_lock = threading.Lock()


_ceiling: dict[str, Any] = {"users": 0, "saved": None}


@contextlib.contextmanager
def memory_ceiling() -> Iterator[None]:
    """While templates render, the process may grow by at most MAX_RENDER_MEMORY (RLIMIT_AS, where the system has
    it). The sandbox stops `*` and `**` from building huge values, but not a loop printing 100,000 x 100,000
    characters, "x".ljust(10**10), a format width, |center, |join or a chain of `~`: each asked the system for 10 GB
    or more, and the machine ran out. Over the ceiling an allocation fails at once: a MemoryError, which the
    caller reports by file and line. Threads rendering at once share one ceiling, restored when the last ends."""
    try:
        import resource

        used = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, IndexError):  # not Linux: no ceiling
        yield
        return
    with _ceiling_lock:
        if _ceiling["users"] == 0:
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = used + MAX_RENDER_MEMORY
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            if soft == resource.RLIM_INFINITY or soft > limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
                _ceiling["saved"] = (soft, hard)
        _ceiling["users"] += 1
    try:
        yield
    finally:
        with _ceiling_lock:
            _ceiling["users"] -= 1
            if _ceiling["users"] == 0 and _ceiling["saved"] is not None:
                resource.setrlimit(resource.RLIMIT_AS, _ceiling["saved"])
                _ceiling["saved"] = None


class _NoOtherFiles(jinja2.BaseLoader):
    """An issue is one file: it may not pull in other templates (layouts can, from their own folder)."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        raise SecurityError(
            f"an issue cannot include, import or extend another template ({template!r}); that belongs in the layout"
        )


def body_environment() -> jinja2.Environment:
    return _Sandbox(
        loader=_NoOtherFiles(), undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


def environment(templates_dir: Path | None, html: bool) -> jinja2.Environment:
    return _Sandbox(
        loader=_layout_loader(templates_dir),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(name: str, context: dict[str, Any], templates_dir: Path | None = None) -> str:
    """One page of `mailer serve` (autoescaped HTML, StrictUndefined): a missing value is a bug, not a blank.

    Pages are `web/NAME` in the editor's layouts folder, else the built-in ones."""
    env = _page_environment(templates_dir)
    try:
        # No memory ceiling here: pages render on a busy server's threads, where a process-wide RLIMIT_AS would
        # fail other requests' allocations. mailer serve renders its page once under the ceiling before serving.
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"layout web/{exc.name} not found in {templates_dir or BUILTIN_TEMPLATES}") from None
    except Exception as exc:  # named by its file and line, like an issue's layout
        raise template_error(f"web/{name}", exc) from None


def render_console_page(folder: Path, name: str, context: dict[str, Any]) -> str:
    """One page of the ops console from the layouts shipped with it in `folder` (autoescaped, StrictUndefined, in
    the sandbox like every page). Not the editor's layouts: `mailer new` does not copy them and --templates does not
    restyle them."""
    try:
        return _console_environment(str(folder)).get_template(name).render(**context)
    except Exception as exc:
        raise template_error(f"{folder.name}/{name}", exc) from None


@functools.lru_cache(maxsize=2)
def _console_environment(folder: str) -> jinja2.Environment:
    return _Sandbox(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@functools.lru_cache(maxsize=4)
def _page_environment(templates_dir: Path | None) -> jinja2.Environment:
    return _Sandbox(
        loader=_layout_loader(templates_dir, "web"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def template_error(origin: str, exc: Exception, line_offset: int = 0) -> TemplateError:
    """One line naming the file and line for anything a template raised: Jinja's errors, the sandbox's refusals,
    and plain Python errors of the template's own making ({{ 1/0 }})."""
    where = origin
    jinja_error = isinstance(exc, jinja2.TemplateError)
    lineno = getattr(exc, "lineno", None) if jinja_error else None
    name = (getattr(exc, "filename", None) or getattr(exc, "name", None)) if jinja_error else None
    if not lineno:
        # Render-time errors (StrictUndefined) carry no lineno; Jinja rewrites the traceback so that each template
        # line that ran appears as a frame whose filename is the template's (or "<template>" for a string).
        # Python's own frozen modules ("<frozen abc>", where a RecursionError often lands) are not templates.
        frames = [
            (frame.filename, frame.lineno)
            for frame in traceback.extract_tb(exc.__traceback__)
            if not frame.filename.endswith(".py") and not frame.filename.startswith("<frozen")
        ]
        if frames:
            # the innermost line that ran; for endless recursion, the line that repeats (the include of itself)
            filename, lineno = Counter(frames).most_common(1)[0][0] if isinstance(exc, RecursionError) else frames[-1]
            name = None if filename == "<template>" else filename
    if name:
        where = str(name)
    elif lineno:
        lineno += line_offset  # the body's line numbers, counted from the top of the issue file
    if lineno:
        where = f"{where} line {lineno}"
    text = str(getattr(exc, "message", None) or exc) if jinja_error else str(exc)
    message = (text.splitlines() or [""])[0] or type(exc).__name__
    if isinstance(exc, RecursionError):
        message = "it includes, imports or calls itself without end (maximum recursion depth exceeded)"
    elif isinstance(exc, MemoryError):
        message = (
            f"it needs more than {MAX_RENDER_MEMORY >> 20} MB of memory to render (a loop, a repeat or a "
            "padding width building a huge text, or a file of tens of MB?)"
        )
    if isinstance(exc, SecurityError) and "unsafe" in message:
        message += " (issues and layouts run in Jinja's sandbox, with only the documented variables)"
    return TemplateError(f"{where}: {message}")
