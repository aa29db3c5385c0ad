"""One construct per concern: tables, queues, functions, WebSocket API, operator API, monitoring."""
