"""User defaults for mpdistill. Optional: delete it and the built-in defaults apply.

Precedence: CLI flags > environment / .env > YAML configs > this file > built-in defaults.
Only the names below are allowed; a misspelled name is an error, not silently ignored.
"""

PROCESSES = 64                  # worker processes (-p)
CONCURRENCY = 1                 # requests in flight per process (-c)
CHECKPOINT_SAVE_INTERVAL = 10   # save the checkpoint every N durable rows
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"

INPUT_FILE = None               # None: the bundled sample dataset
OUTPUT_FILE = "output/{model}_results.jsonl"
MODEL = "gpt-4o-mini"           # with no API key the built-in mock endpoint answers as "mock-model"
SYSTEM_PROMPT = None
MAX_TOKENS = None
TEMPERATURE = None

TIMEOUT = 120.0                 # seconds per request
MAX_RETRIES = 5                 # retries per row after the first attempt
GRACE_PERIOD = 30.0             # seconds in-flight calls may finish after Ctrl-C / SIGTERM
MAX_OUTAGE = 300.0              # seconds every endpoint may be unreachable before the run stops
