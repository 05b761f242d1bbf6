"""The chat pipeline: input moderation → route → generate → output moderation → store."""
