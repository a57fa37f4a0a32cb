"""routers"""
