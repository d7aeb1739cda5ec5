// The STOMP guide imports SockJS from 'sockjs-client' but connects with brokerURL, a plain
// WebSocket, and never calls it. This stands in for the package so the import resolves;
// calling it is a failure the test would see.
export default function SockJS() {
  throw new Error('the STOMP guide client was not meant to use SockJS');
}
