-- Issue 11: SSH into a notebook.

-- The notebook's OpenSSH public keys (a JSON list of key lines, checked and normalized); sent
-- only to the agent running it, shown by the API as fingerprints.
ALTER TABLE notebooks ADD COLUMN ssh_public_keys TEXT NOT NULL DEFAULT '[]';
-- `host:port` of the agent's SSH server as it registered it; "" when it offers none.
ALTER TABLE hosts ADD COLUMN ssh_address TEXT NOT NULL DEFAULT '';
