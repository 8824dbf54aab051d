/* A second thread for the extractor's BLAKE3 of a file's data as it is written (extract.pyx,
   feed): the extractor hands it the part of the chunk it is about to write, writes it
   meanwhile and waits for the hash before it goes on, so that on two cores the hash and the
   write overlap instead of adding up (the copy's critical path is the extractor's thread).
   One job at a time: the hasher and the data are the extractor's, and it never touches them
   while a job runs.  No Python: the thread never takes the GIL. */
#ifndef LAMINA_HASH_WORKER_H
#define LAMINA_HASH_WORKER_H

#include <pthread.h>
#include <stddef.h>
#include "blake3.h"

typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, stop, pending;
    blake3_hasher *hasher;
    const void *data;
    size_t len;
} lamina_hash_worker;

static void *lamina_hw_main(void *arg) {
    lamina_hash_worker *w = (lamina_hash_worker *)arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->pending && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->pending)
            break;  /* stop, and nothing left to hash */
        pthread_mutex_unlock(&w->mu);
        blake3_hasher_update(w->hasher, w->data, w->len);
        pthread_mutex_lock(&w->mu);
        w->pending = 0;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* 0 once the thread runs; -1 if it cannot be started (the caller hashes inline). */
static int lamina_hw_start(lamina_hash_worker *w) {
    if (w->started)
        return 0;
    if (pthread_mutex_init(&w->mu, NULL) != 0)
        return -1;
    if (pthread_cond_init(&w->cv, NULL) != 0) {
        pthread_mutex_destroy(&w->mu);
        return -1;
    }
    w->stop = w->pending = 0;
    if (pthread_create(&w->thread, NULL, lamina_hw_main, w) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        return -1;
    }
    pthread_setname_np(w->thread, "lamina-blake3");
    w->started = 1;
    return 0;
}

static void lamina_hw_post(lamina_hash_worker *w, blake3_hasher *hasher, const void *data, size_t len) {
    pthread_mutex_lock(&w->mu);
    w->hasher = hasher;
    w->data = data;
    w->len = len;
    w->pending = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void lamina_hw_wait(lamina_hash_worker *w) {
    pthread_mutex_lock(&w->mu);
    while (w->pending)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

/* Ends the thread (after the job it may have: it is always waited for first). */
static void lamina_hw_stop(lamina_hash_worker *w) {
    if (!w->started)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    w->started = 0;
}

#endif
