"""API keys never reach a log line: known keys and key-shaped strings are masked."""
from __future__ import annotations

import logging

from mpdistill.logs import RedactFilter, register_secrets, setup_logging


def _record(msg, *args):
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)


def test_known_secret_is_masked_in_message_and_args():
    """A configured key is replaced by its masked form, also when passed as a %s argument."""
    flt = RedactFilter(["topsecretvalue-1234"])
    record = _record("calling with %s now", "topsecretvalue-1234")
    flt.filter(record)
    assert "topsecretvalue-1234" not in record.getMessage() and "1234" in record.getMessage()


def test_key_shaped_strings_are_masked_even_if_unknown():
    """Anything shaped like sk-… is masked although nobody registered it."""
    fake = "sk-" + "abcdefghijkl" * 2   # built at run time: no key-shaped literal in the repository
    record = _record(f"header Authorization: Bearer {fake}")
    RedactFilter().filter(record)
    assert fake not in record.getMessage()


def test_secrets_registered_after_setup_are_masked(tmp_path):
    """Keys found later (an endpoints file) are masked in the log file too."""
    path = setup_logging(tmp_path, "run")
    register_secrets(["late-key-value-9876"])
    logging.getLogger("mpdistill.test").warning("the key is late-key-value-9876")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = path.read_text()
    assert "late-key-value-9876" not in text and "9876" in text
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)
        handler.close()
