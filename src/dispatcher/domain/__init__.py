"""The rules of dispatcher in plain Python: states, transitions, errors, time.

Nothing here imports grpc or sqlalchemy, so the rules read the same from every layer.
"""
