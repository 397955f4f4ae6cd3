/*! switchboard client 0.1.0 */
// Switchboard browser client as an ES module: the same code as
// switchboard.js (which this imports for its side effect: it sets
// globalThis.Switchboard), re-exported. No build step either way.
import './switchboard.js';

const Switchboard = globalThis.Switchboard;
export default Switchboard;
export const {
  version,
  Client,
  connect,
  JsonpTransport,
  FetchTransport,
  SwitchboardError,
  Emitter,
  compareIds,
  backoffDelay,
} = Switchboard;
