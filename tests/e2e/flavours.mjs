// The flavours this run covers: all, or those whose name contains MPR_E2E_FLAVOURS (a
// comma-separated list of substrings, for working on one Credo line).

import { FLAVOURS } from './agents.mjs';

const wanted = (process.env.MPR_E2E_FLAVOURS || '').split(',').map((s) => s.trim()).filter(Boolean);

export const flavours = wanted.length ? FLAVOURS.filter((f) => wanted.some((w) => f.name.includes(w))) : FLAVOURS;
if (!flavours.length) throw new Error(`MPR_E2E_FLAVOURS=${process.env.MPR_E2E_FLAVOURS} matches none of: ${FLAVOURS.map((f) => f.name).join('; ')}`);
