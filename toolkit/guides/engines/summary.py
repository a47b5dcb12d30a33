"""What a batch did: one ``Failure`` line per failed file and the ``Summary`` both engines return."""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class Failure:
    path: str
    reason: str

    def line(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclasses.dataclass
class Summary:
    """What a batch did; ``failed`` holds one line per failed file."""

    written: int = 0
    skipped: int = 0
    failed: list[Failure] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.written + self.skipped + len(self.failed)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def as_dict(self) -> dict[str, object]:
        return {
            "written": self.written,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "failures": [dataclasses.asdict(failure) for failure in self.failed],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def text(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        return (
            f"written {self.written}, skipped {self.skipped}, failed {len(self.failed)} "
            f"({self.seconds:.1f} s, {rate:.1f} files/s)"
        )
