"""OpenAPI touches Litestar cannot infer: a 200 that is JSON or, when asked, a stream."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Reference, Schema

NDJSON = "application/x-ndjson"  # Ollama's streams and the model job streams


def _one_of(components: tuple[str, ...]) -> Reference | Schema:
    refs = [Reference(ref=f"#/components/schemas/{name}") for name in components]
    return refs[0] if len(refs) == 1 else Schema(one_of=refs)


def ndjson_line(*components: str) -> Reference | Schema:
    """One line of an NDJSON stream: any of ``components``."""
    return _one_of(components)


def sse_event(*components: str, done: str | None = None) -> Schema:
    """One server-sent event whose ``data`` is JSON of any of ``components`` (or ``done``)."""
    data = Schema(
        type=OpenAPIType.STRING,
        content_media_type="application/json",
        content_schema=_one_of(components),
    )
    if done is not None:
        data = Schema(any_of=[Schema(const=done), data])
    return Schema(type=OpenAPIType.OBJECT, properties={"data": data}, required=["data"])


def also_streamed(media_type: str, item: Reference | Schema) -> type[Operation]:
    """An Operation whose 200 also documents ``media_type``, each item of it as ``item``.

    As OpenAPI 3.1 reads ``text/event-stream``, the schema describes one item (one
    NDJSON line, one event), not the whole stream.
    """

    @dataclass
    class StreamedOperation(Operation):
        def __post_init__(self) -> None:
            ok = (self.responses or {}).get("200")
            if ok is not None and not isinstance(ok, Reference):
                ok.content = {**(ok.content or {}), media_type: OpenAPIMediaType(schema=item)}

    return StreamedOperation
