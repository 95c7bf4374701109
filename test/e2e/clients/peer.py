"""Dial HOST:80 with a plain socket (AF_INET or AF_INET6 by the address), print what getpeername() says the peer is,
then send one HTTP GET for PATH and print the status line and body, as JSON. Exit 0 when connected; 1 with the
errno name when the connect failed (e.g. ECONNREFUSED)."""
import errno
import json
import socket
import sys

host, path = sys.argv[1], sys.argv[2]
family = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect((host, 80))
except OSError as e:
    print(json.dumps({'error': errno.errorcode.get(e.errno or 0, str(e))}))
    sys.exit(1)
peer = s.getpeername()
s.sendall(f'GET {path} HTTP/1.1\r\nHost: metadata\r\nConnection: close\r\n\r\n'.encode())
data = b''
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, body = data.partition(b'\r\n\r\n')
print(json.dumps({'peer': [peer[0], peer[1]], 'status': head.split(b'\r\n')[0].decode(), 'body': body.decode(errors='replace')}))
