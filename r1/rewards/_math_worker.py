"""Math-verify worker process (run as a script by `r1.rewards.math`; imports nothing from r1).

Protocol: one JSON object per line on stdin ``{"gold": str, "pred": str, "timeout": int}``,
one JSON line per request on stdout ``{"ok": bool, "reason": str}``. The first line written is
``{"ready": true}`` once math_verify is imported. math_verify's own ``signal.alarm`` timeouts work
here because requests run on this process's main thread; the parent also enforces a wall-clock
deadline and kills this process if a C-level computation ignores the alarm.
"""

import json
import sys


def _parse_answer(parse, text):
    # A bare answer ("[1, 2)", "\\frac{1}{2}", the inside of <answer>) is LaTeX: wrap it so the
    # whole is parsed (gold and prediction alike).
    wrapped = "$" + text + "$"
    first = (text, wrapped) if ("$" in text or "\\boxed" in text) else (wrapped, text)
    for candidate in first + ("\\boxed{" + text + "}",):
        parsed = parse(candidate, parsing_timeout=_TIMEOUT[0], raise_on_error=True)
        if parsed:
            return parsed
    return []


_TIMEOUT = [5]


def main() -> None:
    try:
        import resource

        limit = 4 << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    import logging

    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    class _Timeouts(logging.Handler):
        count = 0

        def emit(self, record: logging.LogRecord) -> None:
            if "Timeout" in record.getMessage():
                _Timeouts.count += 1

    mv_logger = logging.getLogger("math_verify")
    mv_logger.addHandler(_Timeouts())
    mv_logger.propagate = False
    mv_logger.setLevel(logging.WARNING)

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            _TIMEOUT[0] = max(1, int(request.get("timeout", 5)))
            gold = _parse_answer(parse, request["gold"])
            if not gold:
                result = {"ok": False, "reason": "bad_gold"}
            else:
                pred = _parse_answer(parse, request["pred"])
                if not pred:
                    result = {"ok": False, "reason": "unparsable"}
                else:
                    before = _Timeouts.count
                    # raise_on_error=False: the library tries every gold/pred pairing itself.
                    ok = bool(verify(gold, pred, timeout_seconds=_TIMEOUT[0]))
                    timed_out = _Timeouts.count > before
                    reason = "" if ok else ("timeout" if timed_out else "wrong")
                    result = {"ok": ok, "reason": reason}
        except TimeoutException:
            result = {"ok": False, "reason": "timeout"}
        except MemoryError:
            result = {"ok": False, "reason": "memory"}
        except Exception:  # noqa: BLE001 - any parser failure is a counted 0
            result = {"ok": False, "reason": "error"}
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
