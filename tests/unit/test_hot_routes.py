"""The hot path's pure parts: its route table and its reading of Content-Type."""

from __future__ import annotations

import email.message

from hypothesis import given
from hypothesis import strategies as st

from api.web.dependencies import is_json_media_type
from api.web.hot import HotRequest, HotResponse, HotRoute, RouteTable


async def nothing(request: HotRequest) -> HotResponse | None:
    return None


ROUTES = RouteTable(
    [
        HotRoute("POST", "/lending/apply", "submit_application", nothing),
        HotRoute("GET", "/lending/applicants/{applicant_id}/history", "history", nothing),
    ]
)


def test_exact_and_templated_paths_match_by_method_and_segments() -> None:
    apply = ROUTES.match("POST", "/lending/apply")
    assert apply is not None
    assert apply[0].operation_id == "submit_application"
    assert apply[1] == {}
    history = ROUTES.match("GET", "/lending/applicants/cust_1/history")
    assert history is not None
    assert history[1] == {"applicant_id": "cust_1"}
    for method, path in [
        ("GET", "/lending/apply"),
        ("POST", "/lending/apply/"),
        ("GET", "/lending/applicants//history"),
        ("GET", "/lending/applicants/a/b/history"),
        ("GET", "/lending/applicants/a/history/"),
        ("POST", "/lending/applicants/a/history"),
        ("GET", "/lending/applicants/a/events"),
    ]:
        assert ROUTES.match(method, path) is None, (method, path)


def emails_reading(content_type: str) -> bool:
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


MEDIA_TEXT = st.text(alphabet=st.sampled_from(list('applicationjson/+;= \t"xAPJ-')), max_size=40)


@given(st.one_of(MEDIA_TEXT, st.sampled_from(["application/json", "application/x+json; q=1"])))
def test_content_type_is_read_as_the_standard_library_reads_it(content_type: str) -> None:
    assert is_json_media_type(content_type) == emails_reading(content_type)
