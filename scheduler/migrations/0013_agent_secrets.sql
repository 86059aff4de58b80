-- Agents' HMAC secrets live in the database, so every scheduler replica verifies every agent.
-- `sealed` is the secret encrypted with Fernet under the scheduler's secrets_key_file (the
-- same file on every replica); the column alone never gives the secret away.
CREATE TABLE agent_secrets (
    host_id TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    created_at REAL NOT NULL
);

-- Hosts whose file in agent_secrets_dir (where secrets lived before) the database has taken
-- account of: imported at a start, or written by add-host as the operator's copy. A file is
-- imported once: deleting a host's row later is not undone by its old file at the next start.
CREATE TABLE agent_secret_files (
    host_id TEXT PRIMARY KEY,
    recorded_at REAL NOT NULL
);
