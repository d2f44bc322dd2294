"""Serving: the OpenAI-compatible endpoint on Ray Serve (`lmp serve`). protocol.py parses and
builds the API's messages, engine.py answers them with a loaded version, source.py loads and checks
what is served, app.py is the Ray Serve deployment, launch.py starts it."""
