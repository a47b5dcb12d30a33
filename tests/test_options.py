"""Options declared as data (guides.options) and the click options derived from them (guides.cli.options)."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from guides.annotators.base import AnnotatorOptions, ModelOptions
from guides.cli.options import apply, click_options
from guides.errors import UsageError
from guides.options import option, option_infos, options_from


def _point(value: object) -> tuple[float, float]:
    text = value if isinstance(value, str) else ",".join(map(str, value))  # type: ignore[arg-type]
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError("a point must be X,Y")
    return float(parts[0]), float(parts[1])


@dataclasses.dataclass(frozen=True)
class Sample(AnnotatorOptions):
    count: int = option(3, "How many.", min=1, max=9)
    ratio: float = option(0.5, "A ratio.", min=0.0, max=1.0)
    mode: str = option("fast", "Mode.", choices=("fast", "slow"), label="speed mode")
    smooth: bool = option(True, "Smooth the result.")
    strict: bool = option(False, "Be strict.")
    limit: int | None = option(None, "An optional limit.", min=1)
    points: tuple[tuple[float, float], ...] = option((), "Points.", parse=_point, flag="--point", metavar="X,Y")
    plain: int = dataclasses.field(default=7, metadata={"help": "A plugin-style field."})
    hidden: str = option("x", "Not on the command line.", cli=False)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"count": 0}, r"^count must be between 1 and 9, got 0$"),
        ({"count": 2.5}, r"^count must be a whole number, got 2.5$"),
        ({"count": True}, r"^count must be a whole number, got True$"),
        ({"ratio": 1.5}, r"^ratio must be between 0 and 1, got 1.5$"),
        ({"ratio": float("nan")}, r"^ratio must be a finite number"),
        ({"mode": "warp"}, r"^unknown speed mode 'warp'; use one of fast, slow$"),
        ({"smooth": "yes"}, r"^smooth must be true or false, got 'yes'$"),
        ({"limit": 0}, r"^limit must be 1 or more, got 0$"),
        ({"resolution": -1}, r"^resolution must be 0 or more, got -1$"),
        ({"points": ("1,2,3",)}, r"^points: a point must be X,Y$"),
        ({"plain": "7"}, r"^plain must be a whole number"),
    ],
)
def test_bad_values_are_one_line_usage_errors(values: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Sample(**values)


def test_values_are_normalised_once_when_built() -> None:
    sample = Sample(points=("1,2", (3, 4)), ratio=1, limit=None)
    assert sample.points == ((1.0, 2.0), (3.0, 4.0))
    assert sample.ratio == 1.0 and isinstance(sample.ratio, float)
    assert Sample(points="5,6").points == ((5.0, 6.0),)  # one point given as text
    assert ModelOptions(batch_size=4).batch_size == 4
    with pytest.raises(UsageError, match="^batch size must be between 1 and 1024, got 0$"):
        ModelOptions(batch_size=0)


def test_unknown_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"^demo: unknown option\(s\) colour; known: count, hidden, limit, mode"):
        options_from(Sample, {"colour": 1}, "demo")


def test_declaration_errors_are_type_errors() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoDefault:  # (a subclass of AnnotatorOptions cannot even be declared without defaults)
        value: int

    @dataclasses.dataclass(frozen=True)
    class Odd(AnnotatorOptions):
        value: dict = dataclasses.field(default_factory=dict)  # type: ignore[type-arg]

    @dataclasses.dataclass(frozen=True)
    class Typo(AnnotatorOptions):
        value: int = dataclasses.field(default=1, metadata={"hepl": "typo"})

    for options_type, message in ((NoDefault, "has no default"), (Odd, "needs a parse function"), (Typo, "unknown option metadata hepl")):
        with pytest.raises(TypeError, match=message):
            option_infos(options_type)


def _command() -> click.Command:
    def callback(**values: object) -> None:
        click.echo(repr(Sample(**values)))

    return click.command("demo")(apply(callback, click_options(Sample)))


def test_derived_click_options_follow_the_declaration() -> None:
    command = _command()
    names = [param.name for param in command.params]
    assert names == ["resolution", "count", "ratio", "mode", "smooth", "strict", "limit", "points", "plain"]
    flags = {param.name: param.opts + param.secondary_opts for param in command.params}
    assert flags["smooth"] == ["--smooth", "--no-smooth"] and flags["strict"] == ["--strict"]
    assert flags["points"] == ["--point"] and flags["plain"] == ["--plain"]
    runner = CliRunner()
    result = runner.invoke(command, ["--count", "4", "--no-smooth", "--point", "1,2", "--point", "3,4", "--mode", "slow"])
    assert result.exit_code == 0, result.output
    assert "count=4" in result.output and "smooth=False" in result.output and "mode='slow'" in result.output
    assert "points=((1.0, 2.0), (3.0, 4.0))" in result.output and "hidden='x'" in result.output
    help_text = runner.invoke(command, ["--help"]).output
    assert "How many." in help_text and "1<=x<=9" in help_text and "[fast|slow]" in help_text and "X,Y" in help_text
    assert "--hidden" not in help_text and "A plugin-style field." in help_text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--count", "10"], "10 is not in the range 1<=x<=9"),
        (["--mode", "warp"], "'warp' is not one of 'fast', 'slow'"),
        (["--point", "1"], "a point must be X,Y"),
    ],
)
def test_bad_command_line_values_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(_command(), args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_model_options_on_the_command_line() -> None:
    command = click.command("m")(apply(lambda **values: click.echo(repr(ModelOptions(**values))), click_options(ModelOptions)))
    result = CliRunner().invoke(command, [], env={"GUIDES_MODELS_DIR": "/some/where"})
    assert result.exit_code == 0, result.output
    # the command line never downloads unasked; the Python API keeps from_pretrained's convention
    assert "download=False" in result.output and ModelOptions().download is True
    assert "models_dir='/some/where'" in result.output and "resolution=512" in result.output
    assert "download=True" in CliRunner().invoke(command, ["--download"]).output
