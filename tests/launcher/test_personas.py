"""Personas: built-ins load, the user's directory overrides, bad files are named with the field at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.personas import PersonaError, builtin_persona_dirs, get_persona, load_personas, parse_persona

GOOD = """---
name: {name}
description: Does one thing well
capabilities: [Python, review]
preferred_cli: qwen
preferred_model: qwen3-coder-plus
---
Work carefully.
"""


def write(directory: Path, filename: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(text)
    return path


def test_builtin_personas_load_with_real_instructions() -> None:
    personas = load_personas()
    assert {"implementer", "reviewer", "tester", "researcher"} <= set(personas)
    for persona in personas.values():
        assert len(persona.instructions) > 300, persona.name
        assert "report_task_completion" in persona.instructions, persona.name
        assert persona.capabilities and persona.description


def test_builtins_are_found_in_the_repository_checkout() -> None:
    dirs = builtin_persona_dirs()
    assert dirs and (dirs[0] / "implementer.md").exists()


def test_user_directory_adds_and_overrides(tmp_path: Path) -> None:
    write(tmp_path / "personas", "mine.md", GOOD.format(name="mine"))
    write(tmp_path / "personas", "reviewer.md", GOOD.format(name="reviewer"))
    personas = load_personas(tmp_path)
    assert personas["mine"].capabilities == ["python", "review"]
    assert personas["reviewer"].description == "Does one thing well"
    assert personas["reviewer"].source == tmp_path / "personas" / "reviewer.md"
    assert "implementer" in personas


def test_missing_field_names_the_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "p.md", "---\nname: p\ncapabilities: [x]\n---\nbody\n")
    with pytest.raises(PersonaError, match=r"p\.md: field 'description': Field required"):
        parse_persona(path)


def test_unknown_cli_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path, "p.md", GOOD.format(name="p").replace("preferred_cli: qwen", "preferred_cli: cursor")
    )
    with pytest.raises(PersonaError, match=r"field 'preferred_cli'.*unknown CLI 'cursor'"):
        parse_persona(path)


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "p.md", GOOD.format(name="p").replace("description:", "colour: red\ndescription:"))
    with pytest.raises(PersonaError, match=r"field 'colour'"):
        parse_persona(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no front matter\n", "must start with a '---' line"),
        ("---\nname: p\n", "not closed"),
        ("---\nname: [unclosed\n---\nbody\n", "not valid YAML"),
        ("---\n- a\n- b\n---\nbody\n", "must be a mapping"),
        ("---\nname: p\ndescription: d\n---\n\n", "field 'instructions'"),
        ("---\nname: Bad Name\ndescription: d\n---\nbody\n", "field 'name'"),
        ("---\nname: p\ndescription: d\ncapabilities: [two words]\n---\nbody\n", "field 'capabilities'"),
    ],
)
def test_malformed_files_get_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.md", text)
    with pytest.raises(PersonaError, match=message) as info:
        parse_persona(path)
    assert str(path) in str(info.value)


def test_duplicate_names_in_one_directory_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "personas", "a.md", GOOD.format(name="same"))
    write(tmp_path / "personas", "b.md", GOOD.format(name="same"))
    with pytest.raises(PersonaError, match="already defined"):
        load_personas(tmp_path)


def test_unknown_persona_lists_the_known_ones() -> None:
    with pytest.raises(PersonaError, match=r"known personas are .*implementer"):
        get_persona("astronaut")
