"""The REST API: aiohttp app factory, routes, body schemas and middlewares."""
