"""ssgan/fields.py: what a schema field declares (role, bounds)."""

from dataclasses import dataclass, fields

from ssgan.fields import NON_NEGATIVE, RATE, ROLES, recipe, schedule


def test_a_field_carries_its_role_and_bounds_and_a_list_default_is_copied_per_instance():
    @dataclass
    class Example:
        lr: float = schedule(0.003, bounds=RATE)
        sizes: list = recipe([1, 2])

    lr, sizes = fields(Example)
    assert lr.metadata["role"] == "schedule" and lr.metadata["resumable"] and lr.metadata["keyed"]
    assert lr.metadata["bounds"] == RATE and sizes.metadata["bounds"] == NON_NEGATIVE
    a, b = Example(), Example()
    a.sizes.append(3)
    assert b.sizes == [1, 2]  # one list per instance, not one shared


def test_every_role_says_whether_it_is_keyed_and_resumable():
    assert all(set(role) == {"keyed", "resumable"} for role in ROLES.values())
    assert not ROLES["identity"]["keyed"] and not ROLES["recipe"]["resumable"]
