from rest_framework import serializers

from apps.common.errors import BadRequest


def validated(serializer_class: type[serializers.Serializer], data, *, fast=None) -> dict:
    """Validate wire data with a serializer; raise BadRequest naming the bad fields.

    `fast(data)` may return the validated data of a well-formed input without the
    serializer's cost (None when unsure: the serializer then decides).
    """
    if not isinstance(data, dict):
        raise BadRequest("Expected a JSON object.")
    if fast is not None and (result := fast(data)) is not None:
        return result
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        raise BadRequest(_summary(serializer.errors), fields=serializer.errors)
    return serializer.validated_data


def _summary(errors) -> str:
    names = ", ".join(sorted(errors)) if isinstance(errors, dict) else "request"
    return f"Invalid field(s): {names}."
