"""Model management over HTTP: ``/api/cluster/models...``, a group's model swap, and Ollama's
``/api/pull`` and ``/api/delete``, all over the ``ModelAdmin`` contract."""
