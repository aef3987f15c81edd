/* tokengate-loadgen: the HTTP/1.1 load generator `make bench` drives Envoy with.
 *
 * Why C: the gateway is measured on a 2-core machine, so every microsecond the generator
 * spends per request is taken from the system under test. A Python generator costs more CPU
 * per request than bare Envoy does and would cap (and flatter) the ratio; no native generator
 * (wrk, oha, h2load) installs from PyPI. This one is a single epoll loop, built by `make
 * bench` with the machine's cc, and reports its own CPU time so the bench can show it was not
 * the bottleneck.
 *
 * Closed loop (-r 0): every connection sends its next request as soon as the last answer
 * ended, which finds saturation. Open loop (-r RATE): requests are due at fixed times and
 * latency is measured from when a request was due, not when it was sent, so a stalled server
 * cannot hide its queue (no coordinated omission).
 *
 * Counted (-n COUNT): send exactly COUNT requests, then wait for every answer; the duration
 * is only a cap. A timed run stops with requests still in flight, which the gateway goes on
 * to serve (or cancel) after the generator has gone: fine for rates, wrong for anything
 * counted per request, such as quota-store round trips.
 *
 * Output: one JSON object. Latency is to the last byte of the answer; ttfb is to the first
 * byte of the body (for a stream, the first event: time to first token).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

enum phase { HEAD, BODY_LEN, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILER, IDLE };

typedef struct {
    int fd;
    enum phase phase;
    size_t sent;          /* bytes of the request written so far */
    char head[16384];     /* response head, until the blank line */
    size_t head_len;
    long long remaining;  /* body bytes (or chunk bytes) still to read */
    int status;
    int busy;             /* a request is in flight */
    int got_body;
    double due, first_byte;
} conn_t;

typedef struct {
    double *v;
    size_t n, cap;
} samples_t;

static char *request;
static size_t request_len;
static struct sockaddr_in target;
static samples_t latency, ttfb;
static long long completed, errors, non_2xx, late;
static double measure_from;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void push(samples_t *s, double x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 65536;
        s->v = realloc(s->v, s->cap * sizeof(double));
        if (!s->v) { perror("realloc"); exit(2); }
    }
    s->v[s->n++] = x;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_quantiles(FILE *out, const char *name, samples_t *s) {
    qsort(s->v, s->n, sizeof(double), cmp);
    double sum = 0;
    for (size_t i = 0; i < s->n; i++) sum += s->v[i];
    fprintf(out, "\"%s\": {", name);
    const double q[] = {50, 90, 99, 99.9};
    const char *k[] = {"p50", "p90", "p99", "p999"};
    for (int i = 0; i < 4; i++) {
        double x = s->n ? s->v[(size_t)((s->n - 1) * q[i] / 100.0)] : 0;
        fprintf(out, "\"%s_us\": %.1f, ", k[i], x * 1e6);
    }
    fprintf(out, "\"max_us\": %.1f, \"mean_us\": %.1f}", s->n ? s->v[s->n - 1] * 1e6 : 0,
            s->n ? sum / s->n * 1e6 : 0);
}

static int open_conn(int ep, conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) { perror("socket"); exit(2); }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(2);
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    c->phase = IDLE;
    c->busy = 0;
    return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void reconnect(int ep, conn_t *c) {
    close(c->fd);
    if (c->busy) errors++;
    open_conn(ep, c);
}

static void start_request(conn_t *c, double due) {
    c->busy = 1;
    c->sent = 0;
    c->head_len = 0;
    c->phase = HEAD;
    c->got_body = 0;
    c->due = due;
}

static int flush_request(conn_t *c) {
    while (c->sent < request_len) {
        ssize_t n = write(c->fd, request + c->sent, request_len - c->sent);
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        c->sent += (size_t)n;
    }
    return 0;
}

static void finish(conn_t *c) {
    double t = now();
    if (c->due >= measure_from) {
        completed++;
        if (c->status < 200 || c->status > 299) non_2xx++;
        push(&latency, t - c->due);
        push(&ttfb, (c->got_body ? c->first_byte : t) - c->due);
    }
    c->busy = 0;
    c->phase = IDLE;
}

/* Parse the head once the blank line is in: status, then how the body is framed. */
static int parse_head(conn_t *c) {
    c->head[c->head_len] = 0;
    if (sscanf(c->head, "HTTP/1.%*d %d", &c->status) != 1) return -1;
    char *p = strcasestr(c->head, "\r\ncontent-length:");
    if (strcasestr(c->head, "\r\ntransfer-encoding: chunked")) {
        c->phase = CHUNK_SIZE;
        c->remaining = 0;
    } else if (p) {
        c->remaining = strtoll(p + 17, NULL, 10);
        c->phase = BODY_LEN;
    } else {
        c->remaining = 0;
        c->phase = BODY_LEN;
    }
    return 0;
}

/* Feed received bytes through the framing state machine; returns bytes consumed or -1. */
static long consume(conn_t *c, const char *buf, size_t len) {
    size_t i = 0;
    while (i < len && c->phase != IDLE) {
        if (c->phase == HEAD) {
            if (c->head_len + 1 >= sizeof c->head) return -1;
            c->head[c->head_len++] = buf[i++];
            if (c->head_len >= 4 && memcmp(c->head + c->head_len - 4, "\r\n\r\n", 4) == 0) {
                if (parse_head(c) < 0) return -1;
                if (c->phase == BODY_LEN && c->remaining == 0) finish(c);
            }
            continue;
        }
        if (!c->got_body) { c->got_body = 1; c->first_byte = now(); }
        if (c->phase == BODY_LEN || c->phase == CHUNK_DATA) {
            size_t take = len - i < (size_t)c->remaining ? len - i : (size_t)c->remaining;
            i += take;
            c->remaining -= (long long)take;
            if (c->remaining == 0) {
                if (c->phase == BODY_LEN) finish(c);
                else { c->phase = CHUNK_CRLF; c->remaining = 2; }
            }
        } else if (c->phase == CHUNK_CRLF) {
            i++;
            if (--c->remaining == 0) c->phase = CHUNK_SIZE;
        } else if (c->phase == CHUNK_SIZE) {
            char ch = buf[i++];
            if (ch == '\n') {
                c->phase = c->remaining ? CHUNK_DATA : TRAILER;
                c->head_len = 0;
            } else if (ch != '\r' && ch != ';') {
                int d = (ch >= '0' && ch <= '9') ? ch - '0' : ((ch | 32) - 'a' + 10);
                if (d < 0 || d > 15) return -1;
                c->remaining = c->remaining * 16 + d;
            }
        } else if (c->phase == TRAILER) {  /* ends with an empty line */
            char ch = buf[i++];
            if (ch == '\n') {
                if (c->head_len == 0) finish(c);
                c->head_len = 0;
            } else if (ch != '\r') {
                c->head_len++;
            }
        }
    }
    return (long)i;
}

static int on_readable(conn_t *c) {
    char buf[65536];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n == 0) return -1;
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        if (!c->busy || consume(c, buf, (size_t)n) != n) return -1;
    }
}

/* Arm the timer for `at`; if that has passed, every connection is busy (the hand-out loop
 * sends whatever is due while one is idle), so disarm it and wait for an answer instead. */
static void arm(int timer, double at, double t) {
    struct itimerspec spec = {0};
    if (at > t) {
        spec.it_value.tv_sec = (time_t)at;
        spec.it_value.tv_nsec = (long)((at - (double)(time_t)at) * 1e9);
    }
    timerfd_settime(timer, TFD_TIMER_ABSTIME, &spec, NULL);
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen -p PORT -f REQUEST_FILE [-a 127.0.0.1] [-c CONNS] [-d SECONDS]\n"
            "               [-w WARMUP_SECONDS] [-r RATE (0 = closed loop)] [-n COUNT]\n");
    exit(2);
}

static void read_request(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    request_len = (size_t)ftell(f);
    rewind(f);
    request = malloc(request_len);
    if (!request || fread(request, 1, request_len, f) != request_len) { perror(path); exit(2); }
    fclose(f);
}

static int in_flight(const conn_t *conns, int nconn) {
    for (int i = 0; i < nconn; i++)
        if (conns[i].busy) return 1;
    return 0;
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1", *file = NULL;
    int port = 0, nconn = 16, opt;
    double duration = 5, warmup = 1, rate = 0;
    long long count = 0; /* 0: run for the duration */
    while ((opt = getopt(argc, argv, "a:p:f:c:d:w:r:n:")) != -1) {
        switch (opt) {
            case 'a': addr = optarg; break;
            case 'p': port = atoi(optarg); break;
            case 'f': file = optarg; break;
            case 'c': nconn = atoi(optarg); break;
            case 'd': duration = atof(optarg); break;
            case 'w': warmup = atof(optarg); break;
            case 'r': rate = atof(optarg); break;
            case 'n': count = atoll(optarg); break;
            default: usage();
        }
    }
    if (!port || !file || nconn < 1 || count < 0) usage();
    read_request(file);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, addr, &target.sin_addr) != 1) usage();

    int ep = epoll_create1(0);
    conn_t *conns = calloc((size_t)nconn, sizeof(conn_t));
    for (int i = 0; i < nconn; i++) open_conn(ep, &conns[i]);

    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    if (timer < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, timer, &tev) < 0) { perror("timerfd"); exit(2); }
    double start = now(), end = start + warmup + duration;
    measure_from = start + warmup;
    long long issued = 0;
    struct epoll_event events[256];
    for (double t = start; t < end; t = now()) {
        if (count && issued == count && !in_flight(conns, nconn)) break;
        /* Hand out what is due: in closed loop every idle connection, in open loop the
         * requests whose time has come, each stamped with the time it was due. */
        for (int i = 0; i < nconn; i++) {
            conn_t *c = &conns[i];
            if (c->busy) continue;
            if (count && issued == count) break;
            double due = rate > 0 ? start + issued / rate : t;
            if (due > t) break;
            if (rate > 0 && t - due > 0.001) late++;
            issued++;
            start_request(c, due);
            if (flush_request(c) < 0) reconnect(ep, c);
        }
        /* Open loop: wake exactly when the next request is due (a timerfd has nanosecond
         * resolution; epoll's millisecond timeout would send requests up to 1 ms late and
         * add that to every latency). */
        if (rate > 0 && (!count || issued < count)) arm(timer, start + issued / rate, now());
        int n = epoll_wait(ep, events, 256, 10);
        for (int k = 0; k < n; k++) {
            conn_t *c = events[k].data.ptr;
            if (c == NULL) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    perror("timerfd");
                continue;
            }
            if ((events[k].events & (EPOLLERR | EPOLLHUP)) ||
                ((events[k].events & EPOLLOUT) && c->busy && flush_request(c) < 0) ||
                ((events[k].events & EPOLLIN) && on_readable(c) < 0)) {
                reconnect(ep, c);
            }
        }
    }
    double elapsed = now() - measure_from;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    printf("{\"connections\": %d, \"rate\": %.1f, \"seconds\": %.3f, \"requests\": %lld, "
           "\"rps\": %.1f, \"errors\": %lld, \"non_2xx\": %lld, \"late_sends\": %lld, "
           "\"cpu_seconds\": %.3f, ",
           nconn, rate, elapsed, completed, completed / elapsed, errors, non_2xx, late, cpu);
    print_quantiles(stdout, "latency", &latency);
    printf(", ");
    print_quantiles(stdout, "ttfb", &ttfb);
    printf("}\n");
    return 0;
}
