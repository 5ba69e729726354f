"""The request tap: an OpenAI API pass-through that joins each request's temperature with the acceptance its
response reports, per temperature bucket (docs/tap.md)."""
