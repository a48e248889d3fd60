"""The baseline mpdistill is measured against: a plain multiprocessing.Pool + openai SDK script,
the way such batch jobs are usually written (imap over rows, one client per process, write each line).

It has no retries, no resume and no fsync; it only shows what the simple way costs.
Usage: python bench/baseline_pool.py IN OUT --base-url URL --model M [-p 64]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
from datetime import datetime, timezone

import openai

_client = None


def _init(base_url: str, api_key: str) -> None:
    global _client
    _client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)


def _call(job: tuple[str, str]) -> dict:
    line, model = job
    row = json.loads(line)
    response = _client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": row["prompt"]}])
    return {"id": row["id"], "input_prompt": row["prompt"], "images": [],
            "answer": response.choices[0].message.content,
            "usage": response.usage.model_dump() if response.usage else None,
            "processed_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="sk-bench-0001")
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("-p", "--processes", type=int, default=64)
    args = parser.parse_args()
    with open(args.input, encoding="utf-8") as f:
        jobs = [(line, args.model) for line in f if line.strip()]
    with multiprocessing.Pool(args.processes, initializer=_init, initargs=(args.base_url, args.api_key)) as pool, \
            open(args.output, "w", encoding="utf-8") as out:
        for record in pool.imap(_call, jobs):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
