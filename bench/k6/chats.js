// k6's side of bench/vs_k6.py: each VU opens one WebSocket to agentsim and plays CHATS chats back to back
// (send user_message, JSON.parse every frame, the chat counts when its agent_completed arrives after the 8 events).
import { WebSocket } from 'k6/experimental/websockets';
import { Counter } from 'k6/metrics';

const URL = __ENV.URL;
const CHATS = parseInt(__ENV.CHATS || '50', 10);
const USERS = parseInt(__ENV.USERS || '100', 10);
const EVENTS = parseInt(__ENV.EVENTS || '8', 10);
const REQUEST = JSON.stringify({ type: 'user_message', payload: { content: 'what is 6*7' } });

const ok = new Counter('chats_ok');
const bad = new Counter('chats_bad');

export const options = {
  scenarios: { chats: { executor: 'per-vu-iterations', vus: USERS, iterations: 1, maxDuration: '10m' } },
  summaryTrendStats: ['med'],
};

export default function () {
  const params = __ENV.COMPRESSION === 'deflate' ? { compression: 'deflate' } : {};
  const ws = new WebSocket(`${URL}?user=k6-${__VU}`, null, params);
  let done = 0;
  let events = 0;
  const send = () => { events = 0; ws.send(REQUEST); };
  ws.onmessage = (m) => {
    const frame = JSON.parse(m.data);
    if (frame.type === 'connection_established') { send(); return; }
    if (frame.type === 'pong') return;
    events++;
    if (frame.type === 'agent_completed') {
      if (events === EVENTS) ok.add(1); else bad.add(1);
      done++;
      if (done >= CHATS) ws.close(); else send();
    }
  };
}

export function handleSummary(data) {
  const count = (name) => (data.metrics[name] ? data.metrics[name].values.count : 0);
  return { stdout: JSON.stringify({ ok: count('chats_ok'), bad: count('chats_bad') }) + '\n' };
}
