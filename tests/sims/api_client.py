"""`python api_client.py DATABASE_URL METHOD [JSON_KWARGS]`: one fusion_runner.api call.

Run as its own process, as a GUI or a notebook would use the API. Prints one
JSON object: {"result": ...} (a RunInfo as its fields, timestamps in ISO 8601),
or {"error": "ExceptionName", "message": ...} for an error of the API.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from typing import Any

from fusion_runner.core.api import Client
from fusion_runner.core.errors import FusionRunnerError


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: plain(item) for key, item in dataclasses.asdict(value).items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def main(database_url: str, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        with Client.open(database_url) as client:
            return {"result": plain(getattr(client, method)(**kwargs))}
    except FusionRunnerError as error:
        return {"error": type(error).__name__, "message": str(error)}


if __name__ == "__main__":
    arguments = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    print(json.dumps(main(sys.argv[1], sys.argv[2], arguments)))
