"""RFC 3339 times as image configs write them ("created"), read without dateutil."""
from __future__ import annotations

import datetime as _dt
import re

# ASCII digits only, as Go's time.Parse reads them (Python's \d and int() take every script's); a
# one-digit hour and a comma before the fraction as Go before 1.20 reads them (go_reads_time)
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d+))?(Z|z|[+-]\d{2}:\d{2})$",
                      re.ASCII)


def parse_rfc3339(text):
    """(unix seconds, nanoseconds, utc offset seconds) of an RFC 3339 time, or None."""
    if not isinstance(text, str):
        return None
    m = _RFC3339.match(text.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        base = _dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=_dt.timezone.utc)
    except ValueError:
        return None
    offset = 0
    if tz not in ("Z", "z"):
        sign = -1 if tz[0] == "-" else 1
        offset = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
        if abs(offset) >= 86400:  # +99:99 (Go refuses it), +24:00 (Go takes it, no Python zone holds it)
            return None
    try:  # the moment must be a datetime in UTC too: 9999-12-31T23:59:59-01:00 is in year 10000
        base - _dt.timedelta(seconds=offset)
    except OverflowError:
        return None
    nanos = int((frac or "0")[:9].ljust(9, "0"))
    secs = int((base - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)).total_seconds()) - offset
    return secs, nanos, offset


# What Go's time.Time reads from JSON (image configs' "created", docker, containerd, umoci,
# skopeo): RFC 3339 with an upper-case T, two-digit fields but the hour (Go before 1.20 takes
# one digit, and a comma before the fraction), the date and time in range; the zone's numbers
# were not checked before Go 1.20.  The union of the versions: what one of them reads.
_GO_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})(?:[.,][0-9]+)?"
                      r"(?:Z|[+-][0-9]{2}:[0-9]{2})")


def go_reads_time(text):
    """True if some Go's time.Time.UnmarshalJSON reads ``text``; a config whose time none reads is
    refused by every Go tool, so lamina refuses it as it reads the config."""
    m = _GO_TIME.fullmatch(text)
    if not m:
        return False
    y, mo, d, h, mi, s = map(int, m.groups())
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    return 1 <= mo <= 12 and 1 <= d <= days[mo - 1] and h < 24 and mi < 60 and s < 60
