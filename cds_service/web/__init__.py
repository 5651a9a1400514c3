"""The only Flask code: the hook and discovery views, feedback, the "Why this advice?" page,
OpenAPI, health and readiness, the client-authentication hook and CORS, request metrics,
and the typed application state the views read (``state.AppState``). A view parses HTTP,
calls one function below, and turns its result or error into a response; no clinical logic
lives here."""
