"""Bare Xen-API over a byte stream: the framing shared by ``xenapi stdio`` and the SSH channel.

A stream is a sequence of documents: XML-RPC ``methodCall`` documents (back to back, or with
whitespace between them) and JSON-RPC requests, one per line.  Each gets exactly one response,
in order.  docs/ssh.md is the specification; this module is its implementation:

* :class:`Framer` is pure (no I/O, h11-style): ``feed(bytes)``, ``end()``, ``next()`` gives the
  next complete :class:`Document` or None.  It only finds where documents end; the wire codecs
  decide whether they are valid, so defusedxml's hardening applies exactly as over HTTP.
  XML documents are found by scanning markup (tags, comments, CDATA, processing instructions)
  with ``bytes.find``: no parser runs on bytes that are not a whole document, and nothing is
  expanded.  A document is bounded by ``max_bytes``; past that its bytes are dropped as they
  are scanned, so a never-ending document cannot eat memory.
* :func:`serve` reads documents, dispatches them and writes the responses.  A stream whose
  transport authenticated a user (an SSH key) gets a session for the stream's life.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenapi import errors as E
from xenapi.context import Identity
from xenapi.errors import XenAPIError
from xenapi.wire import Call, Failure, Limits, WireError, jsonrpc, xmlrpc

if TYPE_CHECKING:
    from xenapi.dispatcher import Dispatcher
    from xenapi.state.sessions import Sessions

log = logging.getLogger(__name__)

XML, JSON, JUNK = "xml", "json", "junk"

_BOM = b"\xef\xbb\xbf"
_SEPARATOR = re.compile(rb"(?:[ \t\r\n]|\xef\xbb\xbf)*")   # whitespace and byte-order marks
_JUNK_END = re.compile(rb"[<\n]")
# Markup constructs: what opens them (longest first: "<!--" before "<!"), what closes them.
_COMMENT, _CDATA, _PI, _DECL, _END_TAG, _START_TAG = range(6)
_MARKUP = ((b"<!--", b"-->", _COMMENT), (b"<![CDATA[", b"]]>", _CDATA), (b"<?", b"?>", _PI),
           (b"<!", b">", _DECL), (b"</", b">", _END_TAG), (b"<", b">", _START_TAG))
_NAME_BYTES = 64                          # enough of a tag to read its name
_XML_DECL = re.compile(rb"<\?xml[\s?]")
_ROOT = b"methodCall"                     # never nested: its start tag inside a document begins the next one


@dataclass(frozen=True, slots=True)
class Document:
    kind: str                             # XML, JSON or JUNK
    body: bytes                           # the document's bytes (empty when it was dropped)
    problem: str = ""                     # why it cannot be used, when the framing already knows


class Framer:
    """Split a byte stream into documents; see the module doc and docs/ssh.md."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.ended = False
        self._buf = bytearray()           # the current document's bytes (from its start) and what follows
        self._kind: str | None = None     # of the document being read; None between documents
        self._pos = 0                     # where scanning resumes in _buf
        self._dropped = 0                 # bytes of the current document dropped for size
        # XML scanning state
        self._markup: tuple | None = None # (kind, start, search_from) of an unterminated construct
        self._depth = 0
        self._root: bytes | None = None
        self._constructs = 0
        self._fast_from: int | None = 0   # where _fast_end searches next; None: the full scan runs

    def feed(self, data: bytes) -> None:
        if self.ended:
            raise ValueError("feed() after end()")
        self._buf += data

    def end(self) -> None:
        """No more input: an unfinished document is given out as broken."""
        self.ended = True

    def next(self) -> Document | None:
        """The next complete document, or None when more input is needed (or, after end(), none is left)."""
        if self._kind is None and not self._start():
            return None
        end = {XML: self._scan_xml, JSON: self._scan_json, JUNK: self._scan_junk}[self._kind]()
        if end is None:
            self._bound()
            if not self.ended:
                return None
            return self._take(len(self._buf), "the input ended inside the document"
                              if self._kind != JSON else "")
        return self._take(end)

    # -- between documents --------------------------------------------------------------------

    def _start(self) -> bool:
        """Skip what separates documents; True once the next one has begun."""
        buf = self._buf
        i = _SEPARATOR.match(buf).end()
        if i == len(buf) or (buf[i] == _BOM[0] and len(buf) - i < len(_BOM) and not self.ended):
            del buf[:i]                   # all separator so far (or a byte-order mark's first bytes)
            return False
        del buf[:i]
        first = buf[0]
        self._kind = XML if first == 0x3C else JSON if first == 0x7B else JUNK
        self._pos, self._dropped, self._markup = 0, 0, None
        self._depth, self._root, self._constructs = 0, None, 0
        self._fast_from = 0
        return True

    def _take(self, end: int, problem: str = "") -> Document:
        kind = self._kind
        body = bytes(self._buf[:end])
        del self._buf[:end]
        self._kind = None
        if self._dropped or len(body) > self.max_bytes:
            body, problem = b"", f"the document is over {self.max_bytes} bytes"
        elif kind == JSON:
            body = body.rstrip(b"\r\n")
        elif kind == JUNK:
            problem = f"not an XML-RPC or JSON-RPC document: {body.strip()[:40].decode('utf-8', 'replace')!r}"
        return Document(kind, body, problem)

    def _bound(self) -> None:
        """Past max_bytes, drop what has been scanned: the document is answered as too big anyway.
        Kept: an unterminated construct's head (a tag's name) and the part still to be searched."""
        if self._dropped == 0 and len(self._buf) <= self.max_bytes:
            return
        buf = self._buf
        if self._markup is None:
            cut = self._pos
            del buf[:cut]
        else:
            kind, start, search_from = self._markup
            middle = max(0, search_from - start - _NAME_BYTES)
            del buf[start + _NAME_BYTES:start + _NAME_BYTES + middle]
            del buf[:start]
            cut = start + middle
            self._markup = (kind, 0, search_from - cut)
        self._pos -= min(cut, self._pos)
        self._dropped += cut or 1         # non-zero from now on: the document is too big

    # -- the three kinds ----------------------------------------------------------------------

    def _scan_json(self) -> int | None:
        end = self._buf.find(b"\n", self._pos)
        if end < 0:
            self._pos = len(self._buf)
            return None
        return end + 1

    def _scan_junk(self) -> int | None:
        match = _JUNK_END.search(self._buf, self._pos)
        if match is None:
            self._pos = len(self._buf)
            return None
        return match.start() if match.group() == b"<" else match.end()

    def _scan_xml(self) -> int | None:
        """Scan markup until the root element closes; return where the document ends."""
        if self._fast_from is not None:
            end = self._fast_end()
            if end is not None or self._fast_from is not None:
                return end
        return self._scan_markup()

    def _fast_end(self) -> int | None:
        """The common case at C speed: the first ``</methodCall>`` ends the document when nothing
        before it could hide or fake one (no comment, CDATA or DTD, no second declaration or
        ``<methodCall``).  Sets _fast_from to None to hand over to the full scan."""
        buf = self._buf
        close = buf.find(b"</methodCall", self._fast_from)
        if close < 0:
            self._fast_from = max(0, len(buf) - len(b"</methodCall") + 1)
            if len(buf) > self.max_bytes or self.ended:
                self._fast_from = None
            return None
        gt = buf.find(b">", close)
        if gt < 0 and not self.ended:
            return None
        head = buf[:close]
        root = head.find(b"<methodCall")
        prolog = head[:root].strip()      # nothing, or just the XML declaration
        if (gt < 0 or buf[close + 12:gt].strip() or root < 0 or head.count(b"<methodCall") != 1
                or b"<!" in head or head.find(b"<?", 1) >= 0
                or prolog and not (prolog.startswith(b"<?") and prolog.endswith(b"?>") and prolog.count(b"<") == 1)):
            self._fast_from = None
            return None
        return gt + 1

    def _scan_markup(self) -> int | None:
        buf = self._buf
        while True:
            if self._markup is None:
                start = buf.find(b"<", self._pos)
                if start < 0:
                    self._pos = len(buf)
                    return None
                opened = self._classify(start)
                if opened is None:
                    self._pos = start
                    return None
                self._markup = (opened[0], start, start + len(opened[1]))
            kind, start, search_from = self._markup
            close = _MARKUP[kind][1]
            found = buf.find(close, search_from)
            if found < 0:
                self._markup = (kind, start, max(search_from, len(buf) - len(close) + 1))
                return None
            self._markup = None
            self._pos = found + len(close)
            end = self._construct(kind, start, found)
            if end is not None:
                return end

    def _classify(self, start: int) -> tuple[int, bytes] | None:
        """Which construct opens at ``start`` (kind, opener); None if more bytes are needed to tell."""
        head = bytes(self._buf[start:start + 9])
        for opener, _close, kind in _MARKUP:
            if head.startswith(opener):
                return kind, opener
            if opener.startswith(head) and not self.ended:
                return None               # e.g. "<!-" so far: a comment or a declaration?
        raise AssertionError("'<' always opens a start tag")

    def _construct(self, kind: int, start: int, close_at: int) -> int | None:
        """Account for one complete construct; return the document's end if it ends here."""
        buf = self._buf
        self._constructs += 1
        if kind == _START_TAG:
            text = bytes(buf[start + 1:min(close_at, start + 1 + _NAME_BYTES)])
            name = re.split(rb"[\s/]", text, maxsplit=1)[0]
            if name == _ROOT and self._root is not None:
                return start              # a new call begins: the unfinished document ends here
            if self._root is None:
                self._root = name
            if buf[close_at - 1] == 0x2F:  # <tag/>: opens and closes
                return self._pos if self._depth == 0 else None
            self._depth += 1
        elif kind == _END_TAG:
            name = bytes(buf[start + 2:min(close_at, start + 2 + _NAME_BYTES)]).strip()
            self._depth -= 1
            if self._depth <= 0 or name == self._root:
                return self._pos
        elif kind == _PI and self._constructs > 1 and _XML_DECL.match(buf, start):
            return start                  # an XML declaration only opens a document
        return None


def documents(read: Callable[[], bytes], max_bytes: int) -> Iterator[Document]:
    """The documents of a stream; ``read()`` returns the next bytes, b"" at the end."""
    framer = Framer(max_bytes)
    while True:
        doc = framer.next()
        if doc is not None:
            yield doc
        elif framer.ended:
            return
        else:
            data = read()
            if data:
                framer.feed(data)
            else:
                framer.end()


# ------------------------------------------------------------------------------------ serving

KEY_LOGIN = "session.login_with_key"            # audit methods of a stream session's opening
PASSWORD_LOGIN = "session.login_with_password"
LOCAL_LOGIN = "session.local_login"


@dataclass
class StreamIdentity(Identity):
    """Who is on a stream.  ``session`` is the session opened for the transport's user, if any
    (``Sessions`` hands it out for ``""`` and for a login as that user; docs/ssh.md).
    ``login_method`` says how the transport authenticated the user, for the audit log: an SSH key,
    the built-in SSH server's password check, or a trusted local peer (``xenapi stdio --user``)."""
    session: str | None = None
    login_method: str = KEY_LOGIN


def serve(dispatcher: Dispatcher, sessions: Sessions, read: Callable[[], bytes], write: Callable[[bytes], None],
          identity: StreamIdentity, limits: Limits) -> None:
    """Answer every document of a stream, in order, until its end.

    A transport user is checked first: XenAPIError (SESSION_AUTHORIZATION_FAILED for an unknown
    user) propagates so that the transport can refuse the stream.  After that nothing raises
    but the transport's own OSError.
    """
    if identity.user is not None:
        sessions.open_for_transport(identity)
    last = XML
    try:
        for doc in documents(read, limits.max_body_bytes):
            kind = last if doc.kind == JUNK else doc.kind
            write(answer(dispatcher, doc, kind, identity, limits) + b"\n")
            last = kind
    finally:
        sessions.close_for_transport(identity)


def answer(dispatcher: Dispatcher, doc: Document, kind: str, identity: Identity, limits: Limits) -> bytes:
    """The response to one document, in the dialect ``kind`` (XML or JSON)."""
    codec = jsonrpc if kind == JSON else xmlrpc
    try:
        if doc.problem:
            raise WireError(doc.problem)
        call = codec.decode(doc.body, limits)
    except WireError as e:
        log.info("event=bad-request via=%s addr=%s reason=%s", identity.via, identity.address or "-", e)
        return _broken(kind, doc, str(e))
    call = dataclasses.replace(call, identity=identity)
    return codec.encode(dispatcher.dispatch(call), call)


def _broken(kind: str, doc: Document, reason: str) -> bytes:
    """XMLRPC_UNMARSHAL_FAILURE in the document's own dialect (JSON: echoing its id if it has one)."""
    if kind == XML:
        return xmlrpc.encode(Failure([E.XMLRPC_UNMARSHAL_FAILURE, "methodCall", reason]))
    call = Call("", (), "jsonrpc2", None)
    try:
        parsed = json.loads(doc.body) if doc.body else None
    except (ValueError, RecursionError):     # nested deeper than Python's stack: no id to echo
        parsed = None
    if isinstance(parsed, dict) and type(parsed.get("id")) in (str, int):
        call = Call("", (), "jsonrpc2" if "jsonrpc" in parsed else "jsonrpc1", parsed["id"])
    return jsonrpc.encode(Failure([E.XMLRPC_UNMARSHAL_FAILURE, "JSON-RPC request", reason]), call)


def is_stream_command(command: str) -> bool:
    """Whether an SSH command asks for the stream: ``xenapi`` or ``xenapi stdio``, by any path."""
    words = command.split()
    return bool(words) and words[0].rpartition("/")[2] == "xenapi" and words[1:] in ([], ["stdio"])


def refusal(error: XenAPIError) -> str:
    """A one-line reason for refusing a stream, for stderr or an HTTP status text."""
    return " ".join(error.description)
