"""The rules scripts/people applies before it touches a database: which names may be a person's login, and which
group roles each profile gives."""
from __future__ import annotations

import pytest

from csp_observatory import database, people

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("login", ["jsmith", "demo_analyst", "a1", "j_smith_2"])
def test_lower_case_identifiers_are_logins(login):
    assert people.check_login(login) == login


@pytest.mark.parametrize("login", ["Jsmith", "j smith", "1jsmith", "j", "j-smith", "jsmith;drop", "é_smith",
                                   "x" * 41, "jsmith\n", "csp_loader", "csp_analyst", "csp_airflow", "pg_monitor",
                                   "postgres", "analyst", "public"])
def test_service_group_shared_and_malformed_names_are_refused(login):
    with pytest.raises(people.PeopleError):
        people.check_login(login)


def test_profiles_give_only_the_group_roles_the_database_grants():
    assert set(people.GROUP_ROLES) == set(database.ROLES)
    assert people.PROFILES == {"analyst": ("csp_analyst",),
                               "restricted_analyst": ("csp_analyst", "csp_personal_reader"),
                               "engineer": ("csp_engineer",)}
    # only the restricted profile reads the personal schema
    assert [p for p, groups in people.PROFILES.items() if "csp_personal_reader" in groups] == ["restricted_analyst"]


def test_new_passwords_are_long_random_and_url_safe():
    made = {people.new_password() for _ in range(50)}
    assert len(made) == 50
    assert all(len(p) >= 32 and p.replace("-", "").replace("_", "").isalnum() for p in made)
