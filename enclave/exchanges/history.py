"""Complete trade histories per exchange, merged into a session's ledger. Side: enclave.

One fetcher per session keeps its cursors between polls, so the first ``sync`` walks
the whole history and every later one costs about O(new trades). Each fetcher paginates
itself: ccxt's ``paginate=True`` helpers stop after ``paginationCalls`` (default 10)
pages, which would cut a long history without a word, so they are never used.

Strategies (``Completeness.strategy``):

``binance-symbol-windows`` (Binance spot, ``GET /api/v3/myTrades``)
    myTrades needs a symbol, and "the time between startTime and endTime can't be
    longer than 24 hours" (Spot API docs, Account Trade List). Per symbol: a probe
    ``fromId=0, limit=1`` ("If fromId is set, it will get trades >= that fromId")
    finds the account's first trade, so no empty windows are scanned before it; then
    24 h windows ``[startTime, endTime]`` up to now with ``limit=1000`` (the maximum).
    A window page that may be truncated is continued with ``fromId`` (which "cannot be
    sent with startTime or endTime") from the highest id known *before* the window,
    ascending, until a trade lies past the window or a page is empty: correct whether
    Binance fills a capped window from its oldest or its newest trades. "May be
    truncated" means the page holds ``limit`` trades, or is at least as large as any
    page this session has seen and holds at least ``suspicious_page`` trades: an
    exchange (or proxy) that silently caps pages below our limit still triggers the
    continuation, for one extra call per record-sized page.

    Symbols: the transitive closure over assets. Assets = currencies with a non-zero
    balance plus the base and quote of every symbol where trades were found; candidate
    symbols = spot markets whose base or quote is such an asset; scanning candidates
    finds more traded symbols, so repeat until nothing new. This finds positions that
    were closed out (sold all X for USDT: X/USDT is a candidate through USDT) and chains
    of them (LINK/BTC found through ETH/BTC through a held ETH). Limits, stated: (1) an
    asset chain with no link to a current balance is missed (deposit X, sell for Y,
    withdraw Y); (2) markets delisted from exchangeInfo cannot be queried by symbol;
    (3) Convert, dust-to-BNB, margin, futures and earn trades are other endpoints and
    are not read; (4) a never-traded candidate is re-probed only when the balance of
    its base or quote changed since its last probe. Cost: one probe per candidate
    (myTrades weighs 20 of the 6000/min IP budget), then one call per day of history
    per traded symbol, then about one call per traded symbol per poll. A pure fromId
    walk would be cheaper; the windows give the time coverage the signed
    completeness record reports.

``kraken-offsets`` (``POST /0/private/TradesHistory``)
    Account-wide, 50 trades per page, newest first, with a ``count`` of all matches
    (Kraken REST docs, Get Trades History). A pass fixes ``end`` (inclusive) at its
    start so new trades cannot shift the pages, then walks ``ofs`` until ``count``;
    fewer distinct trades than ``count`` is a recorded gap. Later passes use
    ``start`` (exclusive) a little before the newest trade seen.

``coinbase-cursor`` (``GET /api/v3/brokerage/orders/historical/fills``)
    Account-wide pages with an opaque ``cursor``; an empty cursor ends the list
    (Advanced Trade API docs, List Fills). A pass fixes ``end_sequence_timestamp``;
    later passes start a little before the newest fill seen. A cursor seen twice in
    one pass is a recorded gap, never a loop. Fills are keyed by ``entry_id``
    ("unique identifier for the fill"): both sides of a self-match share a
    ``trade_id``.

``ccxt-since`` (any other ccxt id)
    ``fetch_my_trades(symbol, since, limit)`` account-wide, or per symbol (same
    discovery as Binance) when the exchange requires a symbol. ``since`` moves to the
    newest timestamp of each page (inclusive: trades sharing that millisecond are
    fetched again and deduplicated), then one past it when a page brought only
    repeats; the walk ends on an empty page, not a short one, so a silent page cap
    cannot truncate it. A full page of one millisecond and an exchange that ignores
    ``since`` are recorded gaps; a silent cap *smaller* than the number of trades in
    one millisecond cannot be told from the end of that millisecond. As complete as
    the exchange's own ``since`` semantics: retention limits are the exchange's.

Trades are deduplicated per session by ``(symbol, id)``. Each ``Trade`` keeps the
exchange's own decimal strings (price, amount, cost, fee) and all scalar fields of the
exchange's record as text (``raw``), for hashing into the Merkle commitment later;
ccxt's unified numbers are floats and are used only where an exchange sends none.

The ``exchange`` object is a ``ccxt.async_support`` exchange (untyped). Each fetcher's
docstring lists exactly what it calls, which is what the test fakes implement.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import FrozenInstanceError, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from ccxt.base.decimal_to_precision import number_to_string
from ccxt.base.precise import Precise

from enclave.exchanges.client import ErrorKind, ExchangeFailure, classify_exception

__all__ = [
    "ACCOUNT_SCOPE",
    "BinanceHistory",
    "CoinbaseHistory",
    "Completeness",
    "Gap",
    "GapReason",
    "GenericHistory",
    "HistoryConfig",
    "HistoryFetcher",
    "KrakenHistory",
    "Trade",
    "TradeLedger",
    "history_fetcher_for",
]

ACCOUNT_SCOPE: Final = "*"
"""The coverage key of account-wide histories (Kraken, Coinbase, generic without symbol)."""

_MAX_GAPS: Final = 100  # bounded: a broken exchange must not grow the record forever
_BINANCE_IDS: Final = frozenset({"binance", "binanceus"})


# ---------------------------------------------------------------------------- data


# A trade's raw record dominates its memory when kept as it arrives: a Binance fill's 13
# (name, text) pairs are 14 tuples and a dozen strings, about 1.4 KB. Its names are the
# same for every record of an endpoint, and most of its values repeat the trade's own
# fields (id, price, qty, ...). So a Trade keeps the names as one tuple shared by every
# trade with the same names, and the values packed in one str, separated by _SEPARATOR,
# a value equal to one of the trade's fields written as that field's one-character
# reference (_REFERENCES[i] for the i-th of Trade._fields()). Anything the packing cannot
# represent unambiguously (a value containing _SEPARATOR or equal to a reference
# character, a name or value that is not a str) keeps the pairs as given.
_SEPARATOR: Final = "\x1f"
_REFERENCES: Final = tuple(chr(code) for code in range(1, 11))
_REFERENCE_INDEX: Final = {reference: i for i, reference in enumerate(_REFERENCES)}
_NAME_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {}
_MAX_NAME_TUPLES: Final = 4096  # distinct raw layouts shared; past it, each trade its own


def _shared_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple per distinct raw layout (bounded), its names interned."""
    shared = _NAME_TUPLES.get(names)
    if shared is None:
        shared = tuple(sys.intern(name) for name in names)
        if len(_NAME_TUPLES) < _MAX_NAME_TUPLES:
            _NAME_TUPLES[shared] = shared
    return shared


def _intern(text: Any) -> Any:
    """One object per distinct symbol, side or currency code, however many trades."""
    return sys.intern(text) if type(text) is str else text


# Recently seen texts that repeat from trade to trade but are parsed into a new object
# each time: an order's id and price (its fills arrive together), and a packed raw
# record made only of references and repeated literals (Binance: "true", "-1", the
# market id). Bounded: emptied when full, so unique texts cost a dict entry for a while,
# never forever.
_RECENT: dict[str, str] = {}
_MAX_RECENT: Final = 4096
_MAX_SHARED_LENGTH: Final = 64  # longer texts are unlikely to repeat


def _shared(text: Any) -> Any:
    """An equal str seen recently, else ``text`` (remembered)."""
    if type(text) is not str or len(text) > _MAX_SHARED_LENGTH:
        return text
    found = _RECENT.get(text)
    if found is None:
        if len(_RECENT) >= _MAX_RECENT:
            _RECENT.clear()
        _RECENT[text] = found = text
    return found


class _RawNames:
    """Storage base of Trade: the shared names of its packed raw record (one slot)."""

    __slots__ = ("_raw_names",)

    _raw_names: tuple[str, ...] | None  # None: the raw slot holds the pairs as given


class Trade(_RawNames):
    """One fill as the exchange reported it; numbers are the exchange's own strings.

    Immutable, compared and hashed by value, like the frozen dataclass it was: the
    fields are ``__slots__`` in order, keyword arguments of the constructor, and
    attributes. Written by hand for memory (a session holds every trade it ever read):
    the ``raw`` slot stores the record packed (see ``_SEPARATOR``), and the ``raw``
    attribute rebuilds the pairs on access. The other fields are plain slots, read on
    the aggregator's hot path.
    """

    # The fields, in their order (a dataclass's order: tests build trades from it).
    __slots__ = (  # noqa: RUF023
        "symbol", "id", "order_id", "side", "price", "amount", "cost", "fee_cost",
        "fee_currency", "timestamp", "raw",
    )  # fmt: skip

    symbol: str  # ccxt unified symbol ("BTC/USDT"), or the exchange's id if unknown
    id: str  # unique per symbol (Coinbase: entry_id)
    order_id: str | None
    side: str  # "buy" | "sell"
    price: str
    amount: str  # in base currency
    cost: str | None  # in quote currency
    fee_cost: str | None
    fee_currency: str | None
    timestamp: int  # ms since the Unix epoch
    raw: tuple[tuple[str, str], ...]  # every scalar field of the exchange's record

    def __init__(
        self, *, symbol: str, id: str, order_id: str | None, side: str, price: str,
        amount: str, cost: str | None, fee_cost: str | None, fee_currency: str | None,
        timestamp: int, raw: tuple[tuple[str, str], ...] = (),
    ) -> None:  # fmt: skip
        setter = object.__setattr__
        setter(self, "symbol", _intern(symbol))
        setter(self, "id", id)
        setter(self, "order_id", _shared(order_id))
        setter(self, "side", _intern(side))
        setter(self, "price", _shared(price))
        setter(self, "amount", amount)
        setter(self, "cost", cost)
        setter(self, "fee_cost", fee_cost)
        setter(self, "fee_currency", _intern(fee_currency))
        setter(self, "timestamp", timestamp)
        names, packed = self._pack(raw)
        setter(self, "_raw_names", names)
        _RAW_SLOT.__set__(self, packed)

    def _fields(self) -> tuple[Any, ...]:
        """The fields ``_REFERENCES`` point at, as text where they are text."""
        return (
            self.symbol, self.id, self.order_id, self.side, self.price, self.amount,
            self.cost, self.fee_cost, self.fee_currency, str(self.timestamp),
        )  # fmt: skip

    def _pack(
        self, raw: Iterable[tuple[str, str]]
    ) -> tuple[tuple[str, ...] | None, str | tuple[tuple[str, str], ...]]:
        """(shared names, packed values), or (None, the pairs) if packing is ambiguous."""
        pairs = raw if type(raw) is tuple else tuple(raw)
        if not pairs:
            return (), ""
        references: dict[str, str] = {}
        for code, text in zip(_REFERENCES, self._fields(), strict=True):
            if type(text) is str and text not in references:
                references[text] = code
        names: list[str] = []
        parts: list[str] = []
        for pair in pairs:
            if type(pair) is not tuple or len(pair) != 2:
                return None, pairs
            name, value = pair
            if type(name) is not str or type(value) is not str:
                return None, pairs
            names.append(name)
            reference = references.get(value)
            if reference is not None:
                parts.append(reference)
            elif value in _REFERENCE_INDEX or _SEPARATOR in value:
                return None, pairs
            else:
                parts.append(value)
        return _shared_names(tuple(names)), _shared(_SEPARATOR.join(parts))

    def _unpack_raw(self) -> tuple[tuple[str, str], ...]:
        """The ``raw`` attribute: the pairs, references resolved."""
        names, packed = self._raw_names, _RAW_SLOT.__get__(self, Trade)
        if names is None:
            return packed  # type: ignore[no-any-return]
        if not names:
            return ()
        fields = self._fields()
        index = _REFERENCE_INDEX
        parts = packed.split(_SEPARATOR)
        texts = [fields[index[part]] if part in index else part for part in parts]
        return tuple(zip(names, texts, strict=True))

    def _value(self) -> tuple[Any, ...]:
        """What equality and hashing compare: every field, raw as stored."""
        return (
            self.symbol, self.id, self.order_id, self.side, self.price, self.amount,
            self.cost, self.fee_cost, self.fee_currency, self.timestamp, self._raw_names,
            _RAW_SLOT.__get__(self, Trade),
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trade) or other.__class__ is not self.__class__:
            return NotImplemented
        # Packing is a function of the fields and raw: equal trades pack equally.
        return self._value() == other._value()

    def __hash__(self) -> int:
        return hash(self._value())

    def __repr__(self) -> str:
        return (
            f"{type(self).__qualname__}(symbol={self.symbol!r}, id={self.id!r}, "
            f"order_id={self.order_id!r}, side={self.side!r}, price={self.price!r}, "
            f"amount={self.amount!r}, cost={self.cost!r}, fee_cost={self.fee_cost!r}, "
            f"fee_currency={self.fee_currency!r}, timestamp={self.timestamp!r}, "
            f"raw={self.raw!r})"
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        # copy and pickle rebuild through __init__ (the default would call __setattr__).
        return (_rebuild_trade, (self.to_json(), self.raw))

    @property
    def key(self) -> tuple[str, str]:
        """The deduplication key."""
        return (self.symbol, self.id)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (raw fields as an object)."""
        return {
            "symbol": self.symbol,
            "id": self.id,
            "order_id": self.order_id,
            "side": self.side,
            "price": self.price,
            "amount": self.amount,
            "cost": self.cost,
            "fee_cost": self.fee_cost,
            "fee_currency": self.fee_currency,
            "timestamp": self.timestamp,
            "raw": dict(self.raw),
        }


# The "raw" slot keeps the packed record; the class attribute of that name becomes the
# property that unpacks it (the slot stays reachable through its descriptor).
_RAW_SLOT: Final[Any] = Trade.__dict__["raw"]
setattr(  # noqa: B010 - assigning the attribute directly would redefine the slot for mypy
    Trade, "raw", property(Trade._unpack_raw, doc="Every scalar field of the record, by name.")
)


def _rebuild_trade(fields: dict[str, Any], raw: tuple[tuple[str, str], ...]) -> Trade:
    return Trade(**{**fields, "raw": raw})


class TradeLedger:
    """A session's trades, deduplicated by ``(symbol, id)``, in arrival order.

    Append-only, so a consumer that remembers ``len(ledger)`` reads only what is new
    with :meth:`since` (aggregation costs O(new trades) per poll). The index is one
    dict of ids per symbol: the trades' own strings are its keys, no key tuple per
    trade.
    """

    def __init__(self) -> None:
        self._by_symbol: dict[str, dict[str, Trade]] = {}
        self._order: list[Trade] = []
        self.conflicts = 0
        """Duplicates whose fields differed from the first copy (kept: the first)."""

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 2):
            return False
        by_id = self._by_symbol.get(key[0])
        return by_id is not None and key[1] in by_id

    def __iter__(self) -> Iterator[Trade]:
        return iter(self._order)

    def add(self, trade: Trade) -> bool:
        """Store ``trade``; False if its key was already there."""
        by_id = self._by_symbol.get(trade.symbol)
        if by_id is None:
            by_id = self._by_symbol[trade.symbol] = {}
        known = by_id.get(trade.id)
        if known is not None:
            if known != trade:
                self.conflicts += 1
            return False
        by_id[trade.id] = trade
        self._order.append(trade)
        return True

    def since(self, index: int) -> Sequence[Trade]:
        """Trades added after the first ``index`` ones."""
        return self._order[index:]

    def sorted(self) -> list[Trade]:
        """All trades by (timestamp, symbol, id)."""
        return sorted(self._order, key=lambda t: (t.timestamp, t.symbol, t.id))

    def keys(self) -> set[tuple[str, str]]:
        """The set of dedupe keys."""
        return {(symbol, ident) for symbol, by_id in self._by_symbol.items() for ident in by_id}


class GapReason(enum.StrEnum):
    """Why part of a history may be missing; each has one fixed description."""

    COUNT_MISMATCH = "count_mismatch"
    CURSOR_STALLED = "cursor_stalled"
    SINCE_IGNORED = "since_ignored"
    TIMESTAMP_OVERFLOW = "timestamp_overflow"
    ID_STALLED = "id_stalled"
    SYMBOL_REFUSED = "symbol_refused"
    UNPARSEABLE = "unparseable_trade"

    @property
    def description(self) -> str:
        """The fixed, human-readable text."""
        return _GAP_TEXT[self]


_GAP_TEXT: Final[Mapping[GapReason, str]] = {
    GapReason.COUNT_MISMATCH: "the exchange reported more trades than it returned",
    GapReason.CURSOR_STALLED: "the exchange's page cursor repeated",
    GapReason.SINCE_IGNORED: "the exchange ignored the start time of the query",
    GapReason.TIMESTAMP_OVERFLOW: "more trades in one millisecond than one page holds",
    GapReason.ID_STALLED: "fromId continuation did not advance",
    GapReason.SYMBOL_REFUSED: "the exchange refused to list trades for this symbol",
    GapReason.UNPARSEABLE: "a trade record could not be read",
}


@dataclass(frozen=True, slots=True)
class Gap:
    """A range of one symbol's history that may be incomplete, and why."""

    symbol: str
    start: int | None  # ms, inclusive; None = unknown
    end: int | None  # ms, exclusive; None = unknown
    reason: GapReason

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "symbol": self.symbol,
            "from": self.start,
            "to": self.end,
            "reason": self.reason.value,
            "description": self.reason.description,
        }


@dataclass(slots=True, kw_only=True)
class Completeness:
    """What a session's history covers: the record the signed output will carry."""

    exchange: str
    strategy: str
    history_from: int | None = None  # configured start (ms); None = the first trade
    symbols_scanned: set[str] = field(default_factory=set)
    symbols_seen: set[str] = field(default_factory=set)
    coverage: dict[str, list[list[int]]] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    gaps: list[Gap] = field(default_factory=list)
    gaps_dropped: int = 0
    last_error: str | None = None
    syncs: int = 0

    @property
    def complete(self) -> bool:
        """At least one sync finished, no recorded gap, and the last sync had no error."""
        return (
            self.syncs > 0 and not self.gaps and not self.gaps_dropped and self.last_error is None
        )

    def cover(self, symbol: str, start: int, end: int) -> None:
        """Record that ``[start, end)`` of ``symbol`` was fully read (merged intervals)."""
        if end <= start:
            return
        intervals = self.coverage.setdefault(symbol, [])
        intervals.append([start, end])
        intervals.sort()
        merged: list[list[int]] = [intervals[0]]
        for lo, hi in intervals[1:]:
            if lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.coverage[symbol] = merged

    def count_window(self, symbol: str) -> None:
        """One more window (or page pass) of ``symbol`` done."""
        self.windows[symbol] = self.windows.get(symbol, 0) + 1

    def add_gap(self, gap: Gap) -> None:
        """Record a gap once; past ``_MAX_GAPS`` only count it."""
        if gap in self.gaps:
            return
        if len(self.gaps) >= _MAX_GAPS:
            self.gaps_dropped += 1
            return
        self.gaps.append(gap)

    def clear_gaps(self, symbol: str, reason: GapReason) -> None:
        """Forget gaps that a later successful read closed."""
        self.gaps = [g for g in self.gaps if not (g.symbol == symbol and g.reason is reason)]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form with stable ordering (for canonical hashing later)."""
        return {
            "exchange": self.exchange,
            "strategy": self.strategy,
            "history_from": self.history_from,
            "symbols_scanned": sorted(self.symbols_scanned),
            "symbols_seen": sorted(self.symbols_seen),
            "coverage": {s: [list(i) for i in self.coverage[s]] for s in sorted(self.coverage)},
            "windows": {s: self.windows[s] for s in sorted(self.windows)},
            "calls": self.calls,
            "syncs": self.syncs,
            "gaps": [g.to_json() for g in self.gaps],
            "gaps_dropped": self.gaps_dropped,
            "last_error": self.last_error,
            "complete": self.complete,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryConfig:
    """Knobs of the history fetchers; defaults are the exchanges' documented maxima."""

    start_ms: int | None = None
    """Ignore trades before this time (ms). None: from the account's first trade."""
    window_ms: int = 86_400_000
    """Binance myTrades: "The time between startTime and endTime can't be longer than
    24 hours" (Spot API docs, Account Trade List)."""
    binance_limit: int = 1000
    """Binance myTrades ``limit``: "Default 500; max 1000"."""
    suspicious_page: int = 100
    """Smallest page treated as possibly capped when no smaller cap is known."""
    coinbase_limit: int = 250
    """List Fills ``limit``; ccxt's own paginator uses 250 as the page size."""
    generic_limit: int = 100
    """``fetch_my_trades`` limit for other exchanges: small, as many cap at 100."""
    overlap_ms: int = 10 * 60_000
    """Incremental reads restart this far before the newest trade or covered time:
    catches trades the exchange published late and absorbs clock skew (dedupe makes
    the overlap free of double counting)."""
    markets_max_age_ms: int = 6 * 3_600_000
    """Reload markets after this long, so new listings become candidate symbols."""

    def __post_init__(self) -> None:
        if not 0 < self.window_ms <= 86_400_000:
            raise ValueError("window_ms must be in (0, 24 h]")
        for name in ("binance_limit", "coinbase_limit", "generic_limit", "suspicious_page"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.overlap_ms < 0:
            raise ValueError("overlap_ms must not be negative")


# ---------------------------------------------------------------------------- helpers


def _text(value: Any) -> str | None:
    """An exchange field as text: strings as sent, JSON spelling for the rest."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _number(value: Any) -> str | None:
    """A ccxt unified number (float) as a plain decimal string."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(number_to_string(value))
    return None


def _raw_fields(info: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(info, Mapping):
        return ()
    fields: list[tuple[str, str]] = []
    for name in sorted(info, key=str):
        text = _text(info[name])
        if text is not None:
            fields.append((str(name), text))
    return tuple(fields)


def _fee(parsed: Mapping[str, Any]) -> tuple[str | None, str | None]:
    fee = parsed.get("fee")
    if not isinstance(fee, Mapping):
        return None, None
    currency = fee.get("currency")
    return _number(fee.get("cost")), currency if isinstance(currency, str) else None


def _iso8601(ms: int) -> str:
    """RFC 3339 with milliseconds, as ccxt's ``iso8601`` writes it."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# ---------------------------------------------------------------------------- base


class HistoryFetcher:
    """One session's history reader; keeps cursors between ``sync`` calls.

    Subclasses implement ``_sync``. Every exchange call goes through ``_call``, which
    counts it and turns any failure into an ``ExchangeFailure`` (fixed text). Progress
    made before a failure is kept, so the next ``sync`` resumes instead of restarting.
    """

    strategy: ClassVar[str] = ""

    def __init__(self, exchange: Any, *, exchange_id: str, config: HistoryConfig) -> None:
        self._exchange = exchange
        self._exchange_id = exchange_id
        self._config = config
        self._now_ms = 0
        self._markets_loaded_at: int | None = None
        self.completeness = Completeness(
            exchange=exchange_id, strategy=self.strategy, history_from=config.start_ms
        )

    async def sync(self, ledger: TradeLedger, *, now_ms: int) -> int:
        """Read everything new up to ``now_ms`` into ``ledger``; return how many trades."""
        self._now_ms = now_ms
        try:
            added = await self._sync(ledger)
        except ExchangeFailure as failure:
            self.completeness.last_error = failure.message
            raise
        self.completeness.last_error = None
        self.completeness.syncs += 1
        return added

    async def resync_clock(self) -> None:
        """Re-measure the exchange's clock after a timestamp rejection (default: nothing)."""

    async def _sync(self, ledger: TradeLedger) -> int:
        raise NotImplementedError

    async def _call(self, method: str, *args: Any) -> Any:
        self.completeness.calls += 1
        try:
            return await getattr(self._exchange, method)(*args)
        except ExchangeFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - every ccxt/aiohttp failure is mapped here
            headers = getattr(self._exchange, "last_response_headers", None)
            failure = classify_exception(
                exc,
                headers=headers if isinstance(headers, Mapping) else None,
                now=self._now_ms / 1000,
            )
            # ``from None``: the ccxt exception's text quotes URLs and bodies.
            raise failure from None

    async def _ensure_markets(self) -> Mapping[str, Any]:
        stale = (
            self._markets_loaded_at is None
            or self._now_ms - self._markets_loaded_at > self._config.markets_max_age_ms
        )
        if stale:
            await self._call("load_markets", self._markets_loaded_at is not None)
            self._markets_loaded_at = self._now_ms
        markets = getattr(self._exchange, "markets", None)
        return markets if isinstance(markets, Mapping) else {}

    def _merge(self, ledger: TradeLedger, trades: Iterable[Trade]) -> int:
        added = 0
        start = self._config.start_ms
        for trade in trades:
            if start is not None and trade.timestamp < start:
                continue
            self.completeness.symbols_seen.add(trade.symbol)
            if ledger.add(trade):
                added += 1
        return added

    def _trade(self, parsed: Any, keys: Mapping[str, str]) -> Trade | None:
        """A ``Trade`` from a ccxt-parsed trade, numbers from the raw record via ``keys``."""
        if not isinstance(parsed, Mapping):
            return None
        info = parsed.get("info")
        raw: Mapping[str, Any] = info if isinstance(info, Mapping) else {}

        def pick(name: str, unified: str) -> str | None:
            key = keys.get(name)
            if key is not None and raw.get(key) is not None:
                return _text(raw[key])
            return _number(parsed.get(unified))

        timestamp = parsed.get("timestamp")
        trade_id = pick("id", "id")
        side = parsed.get("side")
        price = pick("price", "price")
        amount = pick("amount", "amount")
        symbol = parsed.get("symbol") or _text(raw.get(keys.get("market", ""), None))
        if (
            not isinstance(timestamp, int)
            or isinstance(timestamp, bool)
            or not trade_id
            or side not in ("buy", "sell")
            or price is None
            or amount is None
            or not isinstance(symbol, str)
        ):
            return None
        fee_cost, fee_currency = _fee(parsed)
        fee_key = keys.get("fee_cost")
        if fee_key is not None and raw.get(fee_key) is not None:
            fee_cost = _text(raw[fee_key])
        return Trade(
            symbol=symbol,
            id=trade_id,
            order_id=pick("order_id", "order"),
            side=side,
            price=price,
            amount=amount,
            cost=pick("cost", "cost"),
            fee_cost=fee_cost,
            fee_currency=fee_currency,
            timestamp=timestamp,
            raw=_raw_fields(raw),
        )

    def _trades(self, parsed_list: Any, keys: Mapping[str, str], scope: str) -> list[Trade]:
        trades: list[Trade] = []
        for parsed in parsed_list if isinstance(parsed_list, list) else []:
            trade = self._trade(parsed, keys)
            if trade is None:
                self.completeness.add_gap(Gap(scope, None, None, GapReason.UNPARSEABLE))
            else:
                trades.append(trade)
        return trades


class _SymbolDiscovery(HistoryFetcher):
    """Candidate symbols: spot markets touching held or traded assets (transitive)."""

    def __init__(self, exchange: Any, *, exchange_id: str, config: HistoryConfig) -> None:
        super().__init__(exchange, exchange_id=exchange_id, config=config)
        self._traded: set[str] = set()

    async def _balances(self) -> dict[str, str]:
        """Currency code -> total balance as text, non-zero ones only."""
        balance = await self._call("fetch_balance")
        totals = balance.get("total") if isinstance(balance, Mapping) else None
        held: dict[str, str] = {}
        for code, amount in (totals or {}).items():
            if isinstance(code, str) and isinstance(amount, int | float) and amount:
                held[code] = _number(amount) or ""
        return held

    @staticmethod
    def _candidates(markets: Mapping[str, Any], assets: set[str]) -> list[str]:
        found: list[str] = []
        for symbol, market in markets.items():
            if not isinstance(market, Mapping):
                continue
            # spot only: derivatives trades live on other endpoints (and hosts).
            if market.get("spot") is False:
                continue
            if market.get("base") in assets or market.get("quote") in assets:
                found.append(symbol)
        return sorted(found)

    def _assets(self, held: Mapping[str, str], markets: Mapping[str, Any]) -> set[str]:
        assets = set(held)
        for symbol in self._traded:
            market = markets.get(symbol)
            if isinstance(market, Mapping):
                assets |= {a for a in (market.get("base"), market.get("quote")) if a}
        return assets

    async def _scan_all(self, ledger: TradeLedger) -> int:
        markets = await self._ensure_markets()
        held = await self._balances()
        done: set[str] = set()
        added = 0
        while True:
            # Previously traded symbols stay scanned even if no asset touches them now.
            wanted = set(self._candidates(markets, self._assets(held, markets)))
            wanted |= {s for s in self._traded if s in markets}
            pending = sorted(wanted - done)
            if not pending:
                return added
            for symbol in pending:
                done.add(symbol)
                added += await self._scan_symbol_guarded(ledger, symbol, markets[symbol], held)

    async def _scan_symbol_guarded(
        self, ledger: TradeLedger, symbol: str, market: Mapping[str, Any], held: Mapping[str, str]
    ) -> int:
        try:
            added = await self._scan_symbol(ledger, symbol, market, held)
        except ExchangeFailure as failure:
            # A request the exchange refuses for this symbol only (e.g. Binance -1121
            # invalid symbol on a half-delisted market) must not block every other
            # symbol forever: record it and go on. Everything else stops the sync.
            if failure.kind is ErrorKind.EXCHANGE_ERROR and failure.permanent:
                self.completeness.add_gap(Gap(symbol, None, None, GapReason.SYMBOL_REFUSED))
                return 0
            raise
        self.completeness.clear_gaps(symbol, GapReason.SYMBOL_REFUSED)
        return added

    async def _scan_symbol(
        self, ledger: TradeLedger, symbol: str, market: Mapping[str, Any], held: Mapping[str, str]
    ) -> int:
        raise NotImplementedError


# ---------------------------------------------------------------------------- Binance


@dataclass(slots=True)
class _BinanceSymbol:
    first_ms: int | None = None  # time of the account's first trade (probe)
    covered_until: int | None = None  # ms, exclusive: everything before is read
    max_id: int | None = None  # highest trade id read
    probed_balances: tuple[str, str] | None = None  # (base, quote) at an empty probe


_BINANCE_KEYS: Final[Mapping[str, str]] = {
    "id": "id",
    "order_id": "orderId",
    "price": "price",
    "amount": "qty",
    "cost": "quoteQty",
    "fee_cost": "commission",
    "market": "symbol",
}


class BinanceHistory(_SymbolDiscovery):
    """Binance spot: per-symbol probe, 24 h windows, fromId continuation.

    Calls: ``load_markets(reload)``, ``markets``, ``fetch_balance()``,
    ``fetch_my_trades(symbol, since, limit, params)`` with params ``{"endTime"}`` or
    ``{"fromId"}``, ``load_time_difference()``.
    """

    strategy: ClassVar[str] = "binance-symbol-windows"

    def __init__(self, exchange: Any, *, exchange_id: str, config: HistoryConfig) -> None:
        super().__init__(exchange, exchange_id=exchange_id, config=config)
        self._symbols: dict[str, _BinanceSymbol] = {}
        self._largest_page = 0

    async def resync_clock(self) -> None:
        """Binance -1021: measure the server clock offset ccxt signs requests with."""
        await self._call("load_time_difference")

    async def _sync(self, ledger: TradeLedger) -> int:
        return await self._scan_all(ledger)

    async def _page(
        self, symbol: str, since: int | None, limit: int, params: dict[str, Any]
    ) -> list[Trade]:
        parsed = await self._call("fetch_my_trades", symbol, since, limit, params)
        return self._trades(parsed, _BINANCE_KEYS, symbol)

    def _note_trades(self, state: _BinanceSymbol, trades: Sequence[Trade]) -> None:
        ids = [int(t.id) for t in trades if t.id.isdigit()]
        if ids:
            state.max_id = max([*ids, state.max_id]) if state.max_id is not None else max(ids)

    def _possibly_truncated(self, size: int) -> bool:
        limit = self._config.binance_limit
        suspicious = size >= limit or (
            size >= min(self._config.suspicious_page, limit) and size >= self._largest_page
        )
        self._largest_page = max(self._largest_page, size)
        return suspicious

    async def _scan_symbol(
        self, ledger: TradeLedger, symbol: str, market: Mapping[str, Any], held: Mapping[str, str]
    ) -> int:
        state = self._symbols.setdefault(symbol, _BinanceSymbol())
        now = self._now_ms
        origin = self._config.start_ms or 0
        added = 0
        if state.first_ms is None:
            balances = (held.get(market.get("base", ""), ""), held.get(market.get("quote", ""), ""))
            if state.probed_balances == balances:
                return 0  # empty before, and neither asset moved since: nothing to read
            self.completeness.symbols_scanned.add(symbol)
            probe = await self._page(symbol, None, 1, {"fromId": 0})
            if not probe:
                state.probed_balances = balances
                self.completeness.cover(symbol, origin, now)
                return 0
            first = min(probe, key=lambda t: t.timestamp)
            added += self._merge(ledger, probe)
            self._note_trades(state, probe)
            state.first_ms = first.timestamp
            self._traded.add(symbol)
            self.completeness.cover(symbol, origin, max(origin, first.timestamp))
            start = max(origin, first.timestamp)
        else:
            covered = state.covered_until if state.covered_until is not None else state.first_ms
            start = max(origin, state.first_ms, covered - self._config.overlap_ms)
        self.completeness.symbols_scanned.add(symbol)
        window_start = start
        while window_start <= now:
            # endTime is inclusive; the window never exceeds 24 h.
            window_end = min(window_start + self._config.window_ms - 1, now)
            max_id_before = state.max_id
            page = await self._page(
                symbol, window_start, self._config.binance_limit, {"endTime": window_end}
            )
            added += self._merge(ledger, page)
            self._note_trades(state, page)
            if self._possibly_truncated(len(page)):
                from_id = 0 if max_id_before is None else max_id_before + 1
                added += await self._walk(ledger, symbol, state, from_id, until=window_end)
            state.covered_until = window_end + 1
            self.completeness.cover(symbol, window_start, window_end + 1)
            self.completeness.count_window(symbol)
            window_start = window_end + 1
        return added

    async def _walk(
        self, ledger: TradeLedger, symbol: str, state: _BinanceSymbol, from_id: int, *, until: int
    ) -> int:
        """Ascending fromId pages until one passes ``until`` or comes back empty."""
        added = 0
        while True:
            page = await self._page(symbol, None, self._config.binance_limit, {"fromId": from_id})
            if not page:
                return added
            added += self._merge(ledger, page)
            self._note_trades(state, page)
            ids = [int(t.id) for t in page if t.id.isdigit()]
            if not ids or max(ids) < from_id:
                self.completeness.add_gap(Gap(symbol, None, until + 1, GapReason.ID_STALLED))
                return added
            from_id = max(ids) + 1
            if max(t.timestamp for t in page) > until:
                return added


# ---------------------------------------------------------------------------- Kraken


_KRAKEN_KEYS: Final[Mapping[str, str]] = {
    "id": "id",
    "order_id": "ordertxid",
    "price": "price",
    "amount": "vol",
    "cost": "cost",
    "fee_cost": "fee",
    "market": "pair",
}


class KrakenHistory(HistoryFetcher):
    """Kraken: account-wide TradesHistory by ``ofs`` within a fixed ``end``.

    Calls: ``load_markets(reload)``, ``privatePostTradesHistory(params)`` with
    ``ofs``, ``end`` and (incremental) ``start``, ``parse_trade(raw)``.
    """

    strategy: ClassVar[str] = "kraken-offsets"

    def __init__(self, exchange: Any, *, exchange_id: str, config: HistoryConfig) -> None:
        super().__init__(exchange, exchange_id=exchange_id, config=config)
        self._newest_ms: int | None = None
        # The pass in progress survives a failed sync, so a 429 mid-history resumes.
        self._pass: tuple[int | None, int] | None = None  # (start s, end s)
        self._ofs = 0
        self._pass_keys: set[tuple[str, str]] = set()
        self._pass_count: int | None = None

    async def _sync(self, ledger: TradeLedger) -> int:
        await self._ensure_markets()
        if self._pass is None:
            origin = self._config.start_ms
            if self._newest_ms is not None:
                start_ms: int | None = max(origin or 0, self._newest_ms - self._config.overlap_ms)
            else:
                start_ms = origin
            # ``start`` is exclusive and in seconds: one second earlier keeps the first
            # second of the range (dedupe absorbs what that re-reads).
            start_s = None if start_ms is None else max(0, start_ms // 1000 - 1)
            self._pass = (start_s, self._now_ms // 1000)
            self._ofs = 0
            self._pass_keys = set()
            self._pass_count = None
        start_s, end_s = self._pass
        added = 0
        while True:
            params: dict[str, Any] = {"ofs": self._ofs, "end": end_s}
            if start_s is not None:
                params["start"] = start_s  # exclusive (Kraken docs)
            response = await self._call("privatePostTradesHistory", params)
            result = response.get("result") if isinstance(response, Mapping) else None
            result = result if isinstance(result, Mapping) else {}
            records = result.get("trades")
            records = records if isinstance(records, Mapping) else {}
            try:
                self._pass_count = int(result["count"])
            except (KeyError, TypeError, ValueError):
                self._pass_count = None  # unknown: walk on until an empty page
            parsed = [
                self._exchange.parse_trade({**raw, "id": txid})
                for txid, raw in records.items()
                if isinstance(raw, Mapping)
            ]
            page = self._trades(parsed, _KRAKEN_KEYS, ACCOUNT_SCOPE)
            added += self._merge(ledger, page)
            self._pass_keys |= {t.key for t in page}
            for trade in page:
                self._newest_ms = max(self._newest_ms or trade.timestamp, trade.timestamp)
            self._ofs += len(records)
            self.completeness.count_window(ACCOUNT_SCOPE)
            if not records or (self._pass_count is not None and self._ofs >= self._pass_count):
                break
        pass_start = 0 if start_s is None else start_s * 1000
        if self._pass_count is not None and len(self._pass_keys) < self._pass_count:
            self.completeness.add_gap(
                Gap(ACCOUNT_SCOPE, pass_start, (end_s + 1) * 1000, GapReason.COUNT_MISMATCH)
            )
        self.completeness.symbols_scanned.add(ACCOUNT_SCOPE)
        self.completeness.cover(ACCOUNT_SCOPE, pass_start, (end_s + 1) * 1000)
        self._pass = None
        return added


# ---------------------------------------------------------------------------- Coinbase


_COINBASE_KEYS: Final[Mapping[str, str]] = {
    "order_id": "order_id",
    "price": "price",
    "fee_cost": "commission",
    "market": "product_id",
}


class CoinbaseHistory(HistoryFetcher):
    """Coinbase Advanced Trade: account-wide List Fills by ``cursor``.

    Calls: ``load_markets(reload)``,
    ``v3PrivateGetBrokerageOrdersHistoricalFills(params)`` with ``limit``, ``cursor``,
    ``end_sequence_timestamp`` and (incremental) ``start_sequence_timestamp``,
    ``parse_trade(raw)``.
    """

    strategy: ClassVar[str] = "coinbase-cursor"

    def __init__(self, exchange: Any, *, exchange_id: str, config: HistoryConfig) -> None:
        super().__init__(exchange, exchange_id=exchange_id, config=config)
        self._newest_ms: int | None = None
        self._pass: tuple[int | None, int] | None = None  # (start ms, end ms)
        self._cursor: str | None = None
        self._cursors: set[str] = set()

    def _trade(self, parsed: Any, keys: Mapping[str, str]) -> Trade | None:
        trade = super()._trade(parsed, keys)
        if trade is None:
            return None
        raw = dict(trade.raw)
        entry_id = raw.get("entry_id") or raw.get("trade_id") or trade.id
        size, price = raw.get("size"), raw.get("price")
        amount, cost = trade.amount, trade.cost
        if size is not None and price is not None:
            try:
                if raw.get("size_in_quote") == "true":
                    # "size_in_quote": size is in quote currency; base = size / price.
                    cost, amount = size, str(Precise.string_div(size, price))
                else:
                    amount, cost = size, str(Precise.string_mul(size, price))
            except (ArithmeticError, ValueError, TypeError):
                pass
        return Trade(
            symbol=trade.symbol,
            id=entry_id,
            order_id=trade.order_id,
            side=trade.side,
            price=trade.price,
            amount=amount,
            cost=cost,
            fee_cost=trade.fee_cost,
            fee_currency=trade.fee_currency,
            timestamp=trade.timestamp,
            raw=trade.raw,
        )

    async def _sync(self, ledger: TradeLedger) -> int:
        await self._ensure_markets()
        if self._pass is None:
            origin = self._config.start_ms
            start: int | None
            if self._newest_ms is not None:
                start = max(origin or 0, self._newest_ms - self._config.overlap_ms)
            else:
                start = origin
            self._pass = (start, self._now_ms)
            self._cursor = None
            self._cursors = set()
        start_ms, end_ms = self._pass
        added = 0
        while True:
            params: dict[str, Any] = {
                "limit": self._config.coinbase_limit,
                "end_sequence_timestamp": _iso8601(end_ms),
            }
            if start_ms is not None:
                params["start_sequence_timestamp"] = _iso8601(start_ms)
            if self._cursor:
                params["cursor"] = self._cursor
            response = await self._call("v3PrivateGetBrokerageOrdersHistoricalFills", params)
            body = response if isinstance(response, Mapping) else {}
            fills = body.get("fills")
            fills = fills if isinstance(fills, list) else []
            parsed = [self._exchange.parse_trade(f) for f in fills if isinstance(f, Mapping)]
            page = self._trades(parsed, _COINBASE_KEYS, ACCOUNT_SCOPE)
            added += self._merge(ledger, page)
            for trade in page:
                self._newest_ms = max(self._newest_ms or trade.timestamp, trade.timestamp)
            self.completeness.count_window(ACCOUNT_SCOPE)
            cursor = body.get("cursor")
            if not isinstance(cursor, str) or not cursor or body.get("has_next") is False:
                break
            if cursor in self._cursors:
                self.completeness.add_gap(
                    Gap(ACCOUNT_SCOPE, start_ms, end_ms, GapReason.CURSOR_STALLED)
                )
                break
            self._cursors.add(cursor)
            self._cursor = cursor
        self.completeness.symbols_scanned.add(ACCOUNT_SCOPE)
        self.completeness.cover(ACCOUNT_SCOPE, start_ms or 0, end_ms)
        self._pass = None
        return added


# ---------------------------------------------------------------------------- generic


class GenericHistory(_SymbolDiscovery):
    """Any other ccxt exchange: ``fetch_my_trades`` with ``since``/``limit`` pagination.

    Calls: ``has``, ``load_markets(reload)``, ``markets``,
    ``fetch_my_trades(symbol, since, limit)`` and, when the exchange needs a symbol,
    ``fetch_balance()``.
    """

    strategy: ClassVar[str] = "ccxt-since"

    def __init__(self, exchange: Any, *, exchange_id: str, config: HistoryConfig) -> None:
        super().__init__(exchange, exchange_id=exchange_id, config=config)
        self._per_symbol: bool | None = None
        self._since: dict[str, int] = {}
        self._empty_at: dict[str, tuple[str, str]] = {}  # (base, quote) balances at an empty walk

    async def _sync(self, ledger: TradeLedger) -> int:
        has = getattr(self._exchange, "has", {})
        if not (isinstance(has, Mapping) and has.get("fetchMyTrades")):
            raise ExchangeFailure(
                ErrorKind.UNSUPPORTED, error_type="NoFetchMyTrades", permanent=True
            )
        await self._ensure_markets()
        if self._per_symbol is None:
            try:
                added = await self._walk(ledger, None)
            except ExchangeFailure as failure:
                if failure.error_type != "ArgumentsRequired":
                    raise
                self._per_symbol = True
            else:
                self._per_symbol = False
                return added
        if self._per_symbol:
            return await self._scan_all(ledger)
        return await self._walk(ledger, None)

    async def _scan_symbol(
        self, ledger: TradeLedger, symbol: str, market: Mapping[str, Any], held: Mapping[str, str]
    ) -> int:
        balances = (held.get(market.get("base", ""), ""), held.get(market.get("quote", ""), ""))
        if symbol not in self._traded and self._empty_at.get(symbol) == balances:
            return 0  # empty before, and neither asset moved since (see module docstring)
        self.completeness.symbols_scanned.add(symbol)
        added = await self._walk(ledger, symbol)
        if symbol in self.completeness.symbols_seen:
            self._traded.add(symbol)
        else:
            self._empty_at[symbol] = balances
        return added

    async def _walk(self, ledger: TradeLedger, symbol: str | None) -> int:
        scope = symbol or ACCOUNT_SCOPE
        limit = self._config.generic_limit
        origin = self._config.start_ms or 0
        known = self._since.get(scope)
        since = origin if known is None else max(origin, known - self._config.overlap_ms)
        walk_start = since
        added = 0
        while True:
            parsed = await self._call("fetch_my_trades", symbol, since, limit)
            page = self._trades(parsed, {}, scope)
            fresh = self._merge(ledger, page)
            added += fresh
            self.completeness.count_window(scope)
            if not page:
                break
            newest = max(t.timestamp for t in page)
            if min(t.timestamp for t in page) < since:
                # A trade older than ``since`` proves the exchange ignored it: its pages
                # are then some other slice of the history, not the one asked for.
                self.completeness.add_gap(Gap(scope, since, None, GapReason.SINCE_IGNORED))
                break
            self._since[scope] = max(self._since.get(scope, newest), newest)
            if fresh == 0 and newest == since:
                if len(page) >= limit:
                    # A full page of one millisecond: the rest of it is out of reach.
                    self.completeness.add_gap(
                        Gap(scope, since, since + 1, GapReason.TIMESTAMP_OVERFLOW)
                    )
                # Only repeats of this millisecond: step past it. The walk ends on an
                # empty page, not a short one, since a short page may be a silent cap.
                since += 1
                continue
            if fresh == 0 and newest > since:
                since = newest  # a page we already had: move on without stopping
                continue
            since = newest  # inclusive: same-millisecond trades come again, deduplicated
        self.completeness.cover(scope, walk_start, self._now_ms)
        return added


def history_fetcher_for(
    exchange_id: str, exchange: Any, config: HistoryConfig | None = None
) -> HistoryFetcher:
    """The fetcher for an exchange id (Binance, Kraken, Coinbase, else generic)."""
    config = config or HistoryConfig()
    if exchange_id in _BINANCE_IDS:
        return BinanceHistory(exchange, exchange_id=exchange_id, config=config)
    if exchange_id == "kraken":
        return KrakenHistory(exchange, exchange_id=exchange_id, config=config)
    if exchange_id == "coinbase":
        return CoinbaseHistory(exchange, exchange_id=exchange_id, config=config)
    return GenericHistory(exchange, exchange_id=exchange_id, config=config)
