"""calsync.model: the deterministic ids every consumer keys on."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from calsync.model import SYSTEM_EVENT_NAMESPACE, ProviderOrigin, system_event_id


@given(st.sampled_from(list(ProviderOrigin)), st.text(), st.text())
def test_system_event_id_is_the_uuid5_of_origin_resource_and_native_id(
    origin: ProviderOrigin, resource_id: str, native_event_id: str
) -> None:
    """The id is spelled out for speed; it must stay the uuid5 it always was, or every
    consumer sees every event under a second id."""
    name = f"{origin.value}\x1f{resource_id}\x1f{native_event_id}"
    assert system_event_id(origin, resource_id, native_event_id) == str(
        uuid.uuid5(SYSTEM_EVENT_NAMESPACE, name)
    )


def test_system_event_id_of_a_known_occurrence_never_changes() -> None:
    """Pinned (computed with ``uuid.uuid5`` when the id was spelled out): a changed
    namespace or name layout would re-key every event on the topic."""
    id_ = system_event_id(ProviderOrigin.GOOGLE, "dr-lee", "abc123_20261203T090000Z")
    assert id_ == "d745ddeb-eb37-59a9-82ca-77f78f9f0ced"
