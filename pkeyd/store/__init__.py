"""Storage: SQLAlchemy models, engine setup, migrations and the repository.

The repository never commits; the service layer owns every transaction.
"""
