from natter_client import ApiError, DeviceMismatch, RateLimited, Unauthenticated
from natter_client.errors import api_error_from_payload


def test_rest_device_mismatch_exposes_missing_and_extra_devices():
    error = api_error_from_payload(
        409,
        {"error": {"code": "device_mismatch", "message": "", "missing": ["d_2"], "extra": []}},
    )
    assert isinstance(error, DeviceMismatch)
    assert error.status == 409 and error.missing == ["d_2"] and error.extra == []


def test_ws_error_frame_maps_by_code_without_status():
    frame = {
        "type": "error",
        "ref": "r1",
        "code": "rate_limited",
        "message": "slow",
        "retry_after": 2,
    }
    error = api_error_from_payload(None, frame)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 2.0 and error.status is None
    assert "ref" not in error.details and "type" not in error.details


def test_status_picks_the_class_when_the_code_is_unknown():
    assert isinstance(api_error_from_payload(401, {"error": {"code": "whatever"}}), Unauthenticated)
    error = api_error_from_payload(404, {"error": {"code": "not_found", "message": "no"}})
    assert type(error) is ApiError and error.code == "not_found"


def test_non_json_error_body_still_becomes_an_api_error():
    error = api_error_from_payload(502, "<html>Bad gateway</html>")
    assert error.status == 502 and error.code == "http_502"
